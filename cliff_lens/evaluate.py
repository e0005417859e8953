"""Attack success rate (ASR) with and without head ablation.

For each *setting* (baseline, top-k% suppression heads, random-k% heads with several seeds,
or any named head list) the model generates answers to the harmful and to the harmless prompts
with the heads ablated at every position (hooks fire on every generation step), a judge labels
the ANSWER only, and the setting is summarised.

Every harmful and harmless rollout gets ONE outcome by :func:`cliff_lens.judges.outcome`:
``"refused"``, ``"complied"`` or ``"no_answer"`` (thinking never closed, or a blank answer after
a closed thinking; the judge is not asked). Each setting row then holds:

``asr``
    attack successes / harmful prompts, an attack success being a ``"complied"`` harmful
    rollout: a no-answer is NOT a success. ``asr_rate`` (``{"value", "k", "n", "ci95"}``) and
    ``asr_ci95`` give the 95% Wilson interval (:func:`cliff_lens.stats.rate`);
    ``n_attack_success`` is ``k``; ``n_harmful_no_answer`` counts the no-answers and
    ``harmful_unclosed`` is the fraction whose thinking never closed.
``over_refusal``
    ``"refused"`` harmless rollouts / harmless prompts (``over_refusal_rate``,
    ``over_refusal_ci95``, ``n_over_refusal``, ``n_harmless_no_answer``, ``harmless_unclosed``).
    Harmful and harmless prompts are never mixed into one rate.
``harmful_outcomes`` / ``harmless_outcomes``
    the per-prompt outcomes, in the order of ``harmful_prompts`` / ``harmless_prompts``;
    ``harmful_answers`` / ``harmless_answers`` the answer each outcome was judged on (``None``
    for a rollout whose thinking never closed), so every judgement can be audited.
``vs_baseline``
    (non-baseline rows, when the baseline runs) exact McNemar tests against the baseline on the
    same prompts: ``{"asr": {"n", "baseline_only", "setting_only", "p_value"}, "refusal": ...,
    "over_refusal": ...}`` where ``baseline_only`` counts prompts that were a success (``asr``),
    a harmful refusal (``refusal``: no-answers count as neither, so it is reported beside the
    success-based test) or a harmless refusal (``over_refusal``) under the baseline only
    (:func:`cliff_lens.stats.mcnemar_exact`).
``vs_random``
    (top-k% rows, when random-k% sets of the same k run) ``{"n_sets", "asr_mean", "asr_min",
    "asr_max", "asr_empirical_p"}``: the empirical p-value is ``(1 + #random sets with ASR <=
    the top-k% ASR) / (1 + #random sets)`` (:func:`cliff_lens.stats.empirical_p_value`).
``refusal_score_end``
    with ``probe=``: the mean probe probability at the last end-of-thinking token of the harmful
    rollouts (closed ones), computed under the same ablation.

Random-k% settings draw ``n_top_heads(n_layers * n_heads, k)`` heads uniformly without
replacement (``torch.randperm`` with the seed); a ``random_summary`` row per k gives mean,
standard deviation (population, ``ddof=0``), min and max over the seeds, plus the top-k% ASR and
its empirical p-value (see :func:`summarize_random`).

Cost: by default every setting that needs generating goes into ONE generate call over
(setting x prompt) rows, each row ablating its own setting's heads
(:func:`cliff_lens.ablation.row_ablation_hooks`), so the batches are full and the per-step
overhead is paid once for all settings; ``side_by_side=False`` generates one setting per call.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._typing import Validated
from .ablation import AblationMode, ablation_hooks, probe_scores, row_ablation_hooks
from .heads import n_top_heads, suppression_heads, validate_heads
from .judges import KeywordJudge, attack_success_rate, count_outcomes, judge_outcomes, refusal_rate
from .stats import Rate, empirical_p_value, mcnemar_exact

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

log = logging.getLogger("cliff_lens")

__all__ = [
    "AblationResults",
    "AblationSetting",
    "attack_success",
    "random_heads",
    "prompt_heads",
    "settings_for",
    "setting_hooks",
    "save_ablation_results",
    "summarize_random",
]


def random_heads(n_layers: int, n_heads: int, top_percent: float | int, seed: int) -> list[tuple[int, int]]:
    """``n_top_heads(n_layers * n_heads, top_percent)`` heads drawn uniformly without replacement
    with ``torch.Generator().manual_seed(seed)``, sorted by (layer, head)."""
    k = n_top_heads(n_layers * n_heads, top_percent)
    g = torch.Generator().manual_seed(int(seed))
    flat = torch.randperm(n_layers * n_heads, generator=g)[:k]
    return sorted((int(i) // n_heads, int(i) % n_heads) for i in flat)


def settings_for(
    model: HookedTransformer,
    *,
    scores: Float[Tensor, "n_layers n_heads"] | None = None,
    heads_by_setting: dict[str, Sequence[tuple[int, int]]] | None = None,
    top_percents: Sequence[float | int] = (1, 3, 10),
    random_seeds: Sequence[int] = (0, 1, 2, 3, 4),
    baseline: bool = True,
    rankings: dict[str, Float[Tensor, "n_layers n_heads"]] | None = None,
) -> list[dict]:
    """The list of settings :func:`attack_success` runs: ``{"setting", "kind", "heads",
    "top_percent", "seed"}``. Top-k% settings need ``scores`` (from ``head_attributions``);
    ``rankings`` adds top-k% settings of other score matrices, named ``"top-3% <name>"`` (e.g.
    ``{"contrast": contrast_scores(...)}``), compared with the same random sets."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out: list[dict] = []
    if baseline:
        out.append(
            {"setting": "baseline", "kind": "baseline", "heads": [], "top_percent": None, "seed": None}
        )
    for name, hs in (heads_by_setting or {}).items():
        out.append(
            {
                "setting": name,
                "kind": "custom",
                "heads": validate_heads(model, hs),
                "top_percent": None,
                "seed": None,
            }
        )
    if scores is not None:
        if tuple(scores.shape) != (L, H):
            raise ValueError(
                f"scores has shape {tuple(scores.shape)}; this model needs {(L, H)} (head_attributions)"
            )
        for k in top_percents:
            hs = [(lay, h) for lay, h, _ in suppression_heads(scores, k)]
            out.append({"setting": f"top-{k:g}%", "kind": "top", "heads": hs, "top_percent": k, "seed": None})
    for name, sc in (rankings or {}).items():
        if tuple(sc.shape) != (L, H):
            raise ValueError(f"rankings[{name!r}] has shape {tuple(sc.shape)}; this model needs {(L, H)}")
        for k in top_percents:
            hs = [(lay, h) for lay, h, _ in suppression_heads(sc, k)]
            out.append(
                {"setting": f"top-{k:g}% {name}", "kind": "top", "heads": hs, "top_percent": k, "seed": None}
            )
    for k in top_percents:
        n_top_heads(L * H, k)
        for s in random_seeds:
            out.append(
                {
                    "setting": f"random-{k:g}% seed {s}",
                    "kind": "random",
                    "heads": random_heads(L, H, k, s),
                    "top_percent": k,
                    "seed": int(s),
                }
            )
    return out


def _texts(prompts: Sequence[Any], what: str) -> list[str]:
    out = []
    for i, p in enumerate(prompts):
        t = p if isinstance(p, str) else getattr(p, "text", None) or getattr(p, "prompt", None)
        if not isinstance(t, str) or not t:
            raise ValueError(f"{what}[{i}] is {p!r}; pass prompt strings or Prompt objects with .text")
        out.append(t)
    return out


def _call_generate(
    gen: Callable, model: HookedTransformer, prompts: list[str], hooks: list, kwargs: dict
) -> list:
    try:
        params = inspect.signature(gen).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
    except (TypeError, ValueError):
        pass
    rollouts = list(gen(model, prompts, hooks=hooks, **kwargs))
    if len(rollouts) != len(prompts):
        raise RuntimeError(f"generate returned {len(rollouts)} rollouts for {len(prompts)} prompts")
    return rollouts


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes the keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _closed(r: Any) -> bool:
    return getattr(r, "thinking_closed", True) is not False and getattr(r, "answer", None) is not None


def _ci(r: Rate) -> list[float | None]:
    return r.to_dict()["ci95"]


def _mcnemar(base: list[bool], this: list[bool]) -> dict:
    """Exact McNemar of the baseline's vs this setting's per-prompt events on the same prompts."""
    m = mcnemar_exact(base, this)
    return {"n": m["n"], "baseline_only": m["a_only"], "setting_only": m["b_only"], "p_value": m["p_value"]}


def _outcome_fields(prefix: str, outs: list[str], rollouts: list) -> dict:
    """Per-prompt outcomes and counts of one prompt group (``harmful`` / ``harmless``)."""
    c = count_outcomes(outs)
    return {
        f"{prefix}_outcomes": outs,
        f"{prefix}_answers": [getattr(r, "answer", None) for r in rollouts],
        f"n_{prefix}_refused": c["refused"],
        f"n_{prefix}_complied": c["complied"],
        f"n_{prefix}_no_answer": c["no_answer"],
        f"{prefix}_unclosed": sum(getattr(r, "thinking_closed", True) is False for r in rollouts) / len(outs),
    }


def _default_tokenize(model: HookedTransformer) -> Callable[[str, str], Any]:
    from .templates import get_template

    tpl = get_template(getattr(model, "cliff_template", None), tokenizer=model.tokenizer)
    return lambda prompt, thinking: tpl.tokenize(model.tokenizer, prompt, thinking, "")


def attack_success(
    model: HookedTransformer,
    harmful_prompts: Sequence[Any],
    harmless_prompts: Sequence[Any] = (),
    *,
    scores: Float[Tensor, "n_layers n_heads"] | None = None,
    heads_by_setting: dict[str, Sequence[tuple[int, int]]] | None = None,
    rankings: dict[str, Float[Tensor, "n_layers n_heads"]] | None = None,
    top_percents: Sequence[float | int] = (1, 3, 10),
    random_seeds: Sequence[int] = (0, 1, 2, 3, 4),
    mode: Validated[AblationMode] = "mean",
    means: Any = None,
    judge: Any = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    probe: Any = None,
    baseline: bool = True,
    baseline_rollouts: Sequence[Any] | None = None,
    generate_fn: Callable | None = None,
    tokenize_fn: Callable[[str, str], Any] | None = None,
    progress: bool = False,
    previous: Sequence[dict] | None = None,
    side_by_side: bool = True,
    fold_settings: Sequence[dict] | None = None,
    prompt_folds: Sequence[int] | None = None,
    random_harmless: bool = True,
    **generate_kwargs: Any,
) -> list[dict]:
    """Generate, judge and summarise every setting; returns one dict per setting plus one
    ``random_summary`` dict per random k.

    Args:
        model: a ``HookedTransformer`` with a tokenizer.
        harmful_prompts / harmless_prompts: strings or ``Prompt`` objects; kept apart.
        scores: ``[n_layers, n_heads]`` head scores (``head_attributions``) for the top-k% settings.
        heads_by_setting: extra named head lists (``{"paper heads": [(l, h), ...]}``).
        rankings: other score matrices whose top-k% heads are ablated too (``"top-3% <name>"``).
        top_percents / random_seeds: the k values and the random-head seeds.
        mode / means: the ablation (``"mean"`` needs ``means=compute_head_means(...)``).
        judge: a :class:`cliff_lens.judges.Judge` (default ``KeywordJudge()``; the pipeline passes
            ``KeywordJudge(mode=cfg.judge_mode)``). It is called once per setting as
            ``judge.judge_many(answers, prompts)`` with each answer's prompt (a classifier judge
            sees the user turn); ``judge_many(answers)`` / ``judge(answer)`` also work.
        max_new_tokens / batch_size / seed / **generate_kwargs: passed to the generator
            (default ``cliff_lens.rollout.generate_rollouts(model, prompts, hooks=..., ...)``);
            the same sampling seed is used in every setting.
        probe: a ``RefusalProbe`` for ``refusal_score_end`` (needs ``tokenize_fn`` or the model's
            template: ``tokenize_fn(prompt, thinking) -> TokenizedRollout``).
        baseline_rollouts: rollouts already generated without hooks for exactly
            ``harmful_prompts + harmless_prompts`` (in that order) with the same generation
            settings, e.g. a run's rollouts stage; the baseline row then judges these instead of
            generating again (the same greedy decode, so only the time differs).
        previous: rows of an earlier call with the same model, prompts, ablation and generation
            settings (e.g. ``AblationResults.load(path).rows``): a setting with the same name and
            heads is taken from them instead of generated again, so raising ``random_seeds`` only
            generates the new sets. Its tests against the baseline, the random sets and the paper
            ranking are recomputed over the new set of rows; its other fields (e.g. the pipeline's
            ``capability``) are kept.

        fold_settings / prompt_folds: settings whose heads depend on the prompt's fold, for
            head sets chosen out of sample (:func:`cliff_lens.heldout.cross_fit_head_sets`):
            each is ``{"setting", "kind", "top_percent", "seed", "heads_by_fold", ...}`` and
            prompt ``j`` of ``harmful_prompts + harmless_prompts`` is ablated with
            ``heads_by_fold[prompt_folds[j]]``. Kinds: ``"top"`` (a ranking's held-out top set),
            ``"random_matched"`` (random sets with the top set's per-layer counts, per fold).
            Extra keys (e.g. ``"selection"``) are kept in the row.
        random_harmless: with ``False`` the random sets (both nulls) generate the harmful prompts
            only: they are a null for the ASR, and their over-refusal fields are ``None``.
        side_by_side: generate every setting that needs generating in ONE call of the generator,
            over (setting x prompt) rows, each row with its setting's heads ablated
            (:func:`cliff_lens.ablation.row_ablation_hooks`; ``batch_size`` is then rows per
            forward pass). Needs a generator that takes ``row_hooks`` (the default does) and a
            mode other than ``paper_renorm_global``; otherwise, or with ``side_by_side=False``,
            each setting is one call. Both give the same rows (greedy decoding; tested).

    Each setting generates its harmful and harmless prompts together, so they share batches.
    """
    harm = _texts(harmful_prompts, "harmful_prompts")
    benign = _texts(harmless_prompts, "harmless_prompts")
    if not harm:
        raise ValueError("harmful_prompts is empty; ASR needs at least one harmful prompt")
    if generate_fn is None:
        from .rollout import generate_rollouts

        generate_fn = generate_rollouts
    if probe is not None and tokenize_fn is None:
        tokenize_fn = _default_tokenize(model)
    settings = settings_for(
        model,
        scores=scores,
        heads_by_setting=heads_by_setting,
        top_percents=top_percents,
        random_seeds=random_seeds,
        baseline=baseline,
        rankings=rankings,
    )
    settings += _fold_settings(model, fold_settings, prompt_folds, len(harm) + len(benign))
    if mode == "mean" and any(s["heads"] for s in settings) and means is None:
        raise ValueError(
            "mode='mean' needs means=compute_head_means(model, reference_batch); or use mode='zero'"
        )
    base = _check_baseline_rollouts(baseline_rollouts, harm + benign)
    run = _SettingRun(
        model=model,
        harm=harm,
        benign=benign,
        mode=mode,
        means=means,
        judge=judge if judge is not None else KeywordJudge(),
        generate=lambda prompts, hooks, extra: _call_generate(
            generate_fn, model, prompts, hooks,
            dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, **generate_kwargs, **extra),
        ),
        probe=probe,
        tokenize_fn=tokenize_fn,
        batch_size=batch_size,
        random_harmless=random_harmless,
    )  # fmt: skip
    done = _reusable_rows(previous, len(harm), len(benign))
    rows: list[dict | None] = []
    pending: list[tuple[int, dict]] = []
    for i, st in enumerate(settings):
        old = done.get(st["setting"])
        if old is not None and _same_heads(old, st):
            rows.append(old)
        elif st["kind"] == "baseline" and base is not None:
            rows.append(run.row(st, base))
        else:
            rows.append(None)
            pending.append((i, st))
    together = (
        side_by_side
        and len(pending) > 1
        and mode != "paper_renorm_global"
        and _accepts(generate_fn, "row_hooks")
    )
    if together:
        if progress:
            log.info("attack_success: %d settings side by side in one generation", len(pending))
        outs: list[list | None] = list(run.generate_side_by_side([st for _, st in pending]))
    else:
        outs = [None] * len(pending)
    for (i, st), got in zip(pending, outs):
        if progress and got is None:
            log.info(
                "attack_success %d/%d %s (%d heads)", i + 1, len(settings), st["setting"], len(st["heads"])
            )
        rows[i] = run.row(st, got)
    out = [r for r in rows if r is not None]
    _compare_to_baseline(out)
    summary = summarize_random(out)
    _add_vs_random(out, summary)
    return out + summary


#: fields of a row computed from the other rows, recomputed when a row is reused
_DERIVED = ("vs_baseline", "vs_random", "vs_random_matched", "vs_paper_ranking")


def _reusable_rows(previous: Sequence[dict] | None, n_harmful: int, n_harmless: int) -> dict[str, dict]:
    """``previous``'s measured rows by setting name, without their derived fields; rows measured on
    another number of prompts are not reusable."""
    out: dict[str, dict] = {}
    for r in previous or ():
        if str(r.get("kind")).endswith("_summary") or r.get("n_harmful") != n_harmful:
            continue
        # a random set measured on the harmful prompts only (random_harmless=False) has no harmless
        if r.get("n_harmless") != n_harmless and not (r.get("kind") in NULLS and r.get("n_harmless") == 0):
            continue
        out[r["setting"]] = {k: v for k, v in r.items() if k not in _DERIVED}
    return out


def setting_hooks(
    model: HookedTransformer, heads: Sequence[Sequence[int]], mode: AblationMode, means: Any = None
) -> list:
    """The forward hooks of one ablation setting: :func:`cliff_lens.ablation.ablation_hooks` of its
    heads, or none for a setting without heads (the baseline). :func:`attack_success` generates
    with these, and the pipeline measures each setting's capability cost with the same hooks."""
    pairs = [(int(h[0]), int(h[1])) for h in heads]
    return ablation_hooks(model, pairs, mode, means) if pairs else []


def _check_baseline_rollouts(baseline_rollouts: Sequence[Any] | None, prompts: list[str]) -> list | None:
    """``baseline_rollouts`` as a list, checked to be one rollout per prompt, in order."""
    if baseline_rollouts is None:
        return None
    out = list(baseline_rollouts)
    got = [getattr(r, "prompt", None) for r in out]
    if got != prompts:
        raise ValueError(
            "baseline_rollouts must be one rollout per prompt of harmful_prompts + harmless_prompts, "
            f"in that order (got {len(got)} rollouts for {len(prompts)} prompts, or other "
            "prompts); pass baseline_rollouts=None to generate the baseline"
        )
    return out


@dataclass
class _SettingRun:
    """What every setting of one :func:`attack_success` call shares; :meth:`row` runs one."""

    model: Any
    harm: list[str]
    benign: list[str]
    mode: AblationMode
    means: Any
    judge: Any
    generate: Callable[[list[str], list, dict], list]
    probe: Any
    tokenize_fn: Callable[[str, str], Any] | None
    batch_size: int
    random_harmless: bool = True

    def prompts_of(self, st: dict) -> list[str]:
        """The prompts setting ``st`` is measured on: harmful, then harmless (random sets: harmful
        only when ``random_harmless`` is off)."""
        if not self.random_harmless and st["kind"] in NULLS:
            return list(self.harm)
        return self.harm + self.benign

    def row(self, st: dict, rollouts: list | None) -> dict:
        """Generate (unless ``rollouts`` are given), judge and summarise one setting."""
        prompts = self.prompts_of(st)
        groups = _head_groups(prompt_heads(st, len(self.harm) + len(self.benign))[: len(prompts)])
        row = dict(
            st,
            heads=[list(h) for h in st["heads"]],
            n_heads=len(st["heads"]),
            mode=self.mode if st["heads"] else None,
        )
        if "heads_by_fold" in st:
            row["heads_by_fold"] = [[list(h) for h in hs] for hs in st["heads_by_fold"]]
            row["n_heads"] = max(len(hs) for hs in st["heads_by_fold"])
        both = rollouts
        if both is None:  # one call per head set of this setting (one call unless it is per fold)
            got: dict[int, Any] = {}
            for hs, idx in groups:
                hooks = setting_hooks(self.model, hs, self.mode, self.means)
                got.update(zip(idx, self.generate([prompts[j] for j in idx], hooks, {})))
            both = [got[j] for j in range(len(prompts))]
        harm = self.harm
        harm_r, ben_r = both[: len(harm)], both[len(harm) :]
        # one judge call per setting, every answer with its prompt (cliff_lens.judges.outcome rule)
        outs = [o for o, _ in judge_outcomes(both, self.judge, prompts=(harm + self.benign)[: len(both)])]
        row.update(_harmful_fields(outs[: len(harm)], harm_r))
        row.update(_harmless_fields(outs[len(harm) :], ben_r))
        row["refusal_score_end"] = self._refusal_score_end(harm_r, groups)
        return row

    def generate_side_by_side(self, sts: list[dict]) -> list[list]:
        """Every setting of ``sts`` in one generator call over (setting x prompt) rows; returns
        each setting's rollouts in the order of ``harm + benign``."""
        every = self.harm + self.benign
        rows = [(si, j) for si, st in enumerate(sts) for j in range(len(self.prompts_of(st)))]
        per = [prompt_heads(st, len(every)) for st in sts]
        heads = [per[si][j] for si, j in rows]

        def row_hooks(idx: list[int]) -> list:
            return row_ablation_hooks(self.model, [heads[i] for i in idx], self.mode, self.means)

        out = self.generate([every[j] for _, j in rows], [], {"row_hooks": row_hooks})
        by_setting: list[list] = [[] for _ in sts]
        for (si, _), r in zip(rows, out, strict=True):
            by_setting[si].append(r)
        return by_setting

    def _refusal_score_end(self, harm_r: list, groups: list[tuple[list, list[int]]]) -> float | None:
        """Mean probe probability at the last end-of-thinking token of the closed harmful rollouts,
        each under its own head set."""
        if self.probe is None or self.tokenize_fn is None:  # tokenize_fn is set whenever probe is
            return None
        tok = self.tokenize_fn
        total, n = 0.0, 0
        for hs, idx in groups:
            mine = [j for j in idx if j < len(self.harm) and _closed(harm_r[j])]
            if not mine:
                continue
            s = probe_scores(
                self.model,
                [tok(self.harm[j], harm_r[j].thinking or "") for j in mine],
                self.probe,
                positions="end_of_thinking_last",
                score="probability",
                fwd_hooks=setting_hooks(self.model, hs, self.mode, self.means),
                batch_size=self.batch_size,
            )
            total, n = total + float(s.sum()), n + len(mine)
        return total / n if n else None


def prompt_heads(st: dict, n_prompts: int) -> list[list[tuple[int, int]]]:
    """The head set each of ``n_prompts`` prompts is ablated with under setting ``st``: its
    ``heads``, or ``heads_by_fold[prompt_folds[j]]`` for a per-fold setting."""
    if "heads_by_fold" in st:
        folds = st["prompt_folds"]
        by_fold = [[(int(h[0]), int(h[1])) for h in hs] for hs in st["heads_by_fold"]]
        return [by_fold[f] for f in folds]
    hs = [(int(h[0]), int(h[1])) for h in st["heads"]]
    return [hs] * n_prompts


def _head_groups(per_prompt: list[list[tuple[int, int]]]) -> list[tuple[list, list[int]]]:
    """Prompts grouped by their head set, in order of first appearance: ``[(heads, indices)]``."""
    groups: dict[tuple, list[int]] = {}
    for j, hs in enumerate(per_prompt):
        groups.setdefault(tuple(hs), []).append(j)
    return [(list(k), idx) for k, idx in groups.items()]


def _same_heads(old: dict, st: dict) -> bool:
    """Whether a previous row was measured with the heads of setting ``st`` (per fold included)."""
    if old["heads"] != [list(h) for h in st["heads"]]:
        return False
    if "heads_by_fold" not in st:
        return "heads_by_fold" not in old
    return old.get("heads_by_fold") == [[list(h) for h in hs] for hs in st["heads_by_fold"]] and list(
        old.get("prompt_folds") or ()
    ) == list(st["prompt_folds"])


def _fold_settings(
    model: Any, fold_settings: Sequence[dict] | None, prompt_folds: Sequence[int] | None, n_prompts: int
) -> list[dict]:
    """``fold_settings`` checked and completed with ``prompt_folds`` and the union of their heads."""
    if not fold_settings:
        return []
    folds = [int(f) for f in (prompt_folds or ())]
    if len(folds) != n_prompts:
        raise ValueError(
            f"prompt_folds has {len(folds)} entries for {n_prompts} prompts (harmful + harmless); "
            "pass one fold per prompt with fold_settings"
        )
    out = []
    for st in fold_settings:
        by_fold = [sorted(validate_heads(model, hs)) for hs in st["heads_by_fold"]]
        if max(folds, default=0) >= len(by_fold) or min(folds, default=0) < 0:
            raise ValueError(
                f"setting {st['setting']!r} has {len(by_fold)} folds but prompt_folds names fold "
                f"{max(folds)}; pass one head set per fold"
            )
        union = sorted({h for hs in by_fold for h in hs})
        out.append({**st, "heads": union, "heads_by_fold": by_fold, "prompt_folds": folds})
    return out


def _rate_fields(group: str, count: str, rate_key: str, r: Rate, outs: list[str], rollouts: list) -> dict:
    """One prompt group's rate fields (``n_<group>``, the count, the rate with its interval and as
    one object) followed by its outcomes (:func:`_outcome_fields`)."""
    return {
        f"n_{group}": len(outs),
        count: r.k,
        rate_key: r.value,
        f"{rate_key}_ci95": _ci(r),
        f"{rate_key}_rate": r.to_dict(),
        **_outcome_fields(group, outs, rollouts),
    }


def _harmful_fields(h_out: list[str], harm_r: list) -> dict:
    """ASR fields of one setting from its harmful outcomes."""
    return _rate_fields("harmful", "n_attack_success", "asr", attack_success_rate(h_out), h_out, harm_r)


def _harmless_fields(b_out: list[str], ben_r: list) -> dict:
    """Over-refusal fields of one setting from its harmless outcomes (``None`` without prompts)."""
    if not b_out:
        return dict(
            n_harmless=0,
            n_over_refusal=None,
            over_refusal=None,
            over_refusal_ci95=None,
            over_refusal_rate=None,
            harmless_outcomes=[],
            harmless_unclosed=None,
        )
    return _rate_fields("harmless", "n_over_refusal", "over_refusal", refusal_rate(b_out), b_out, ben_r)


#: the two nulls a top-k% set is compared with: setting kind -> (summary kind, field on the top row)
NULLS: dict[str, tuple[str, str]] = {
    "random": ("random_summary", "vs_random"),  # k% of all heads, uniformly
    "random_matched": ("random_matched_summary", "vs_random_matched"),  # the top set's layer counts
}


def _null_sets(rows: list[dict], kind: str, top: dict) -> list[dict]:
    """The random sets of null ``kind`` that a top-k% row is compared with: same k, and for the
    layer-matched null the sets matched to this row (``matches``)."""
    return [
        x
        for x in rows
        if x.get("kind") == kind
        and x.get("top_percent") == top.get("top_percent")
        and (kind == "random" or x.get("matches") == top.get("setting"))
    ]


def _add_vs_random(rows: list[dict], summary: list[dict]) -> None:
    """``vs_random`` (uniform null) and ``vs_random_matched`` (layer-matched null, where it ran)
    on every top-k% row: its ASR among the random sets of the same k."""
    for r in rows:
        if r["kind"] != "top":
            continue
        for kind, (_, key) in NULLS.items():
            null = _null_sets(rows, kind, r)
            if not null and kind != "random":
                continue
            st = _stats([x["asr"] for x in null])
            r[key] = (
                None
                if not null
                else {
                    "n_sets": len(null),
                    "asr_mean": st["mean"],
                    "asr_min": st["min"],
                    "asr_max": st["max"],
                    "asr_empirical_p": empirical_p_value(
                        r["asr"], [x["asr"] for x in null], alternative="less"
                    ),
                }
            )


def _compare_to_baseline(rows: list[dict]) -> None:
    """``vs_baseline`` on every non-baseline row: exact McNemar tests of attack success (harmful
    prompts) and of refusal (harmless prompts) against the baseline, paired by prompt."""
    base = next((r for r in rows if r["kind"] == "baseline"), None)
    for r in rows:
        if r["kind"] == "baseline":
            continue
        if base is None:
            r["vs_baseline"] = None
            continue
        r["vs_baseline"] = {
            "asr": _mcnemar(
                [o == "complied" for o in base["harmful_outcomes"]],
                [o == "complied" for o in r["harmful_outcomes"]],
            ),
            # refusals alone: a no-answer is neither a success nor a refusal, so the two tests differ
            "refusal": _mcnemar(
                [o == "refused" for o in base["harmful_outcomes"]],
                [o == "refused" for o in r["harmful_outcomes"]],
            ),
            "over_refusal": _mcnemar(
                [o == "refused" for o in base["harmless_outcomes"]],
                [o == "refused" for o in r["harmless_outcomes"]],
            )
            if r["harmless_outcomes"]
            else None,
        }


def _stats(vals: list[float]) -> dict:
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None}
    m = sum(vals) / len(vals)
    return {
        "mean": m,
        "std": math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)),
        "min": min(vals),
        "max": max(vals),
    }


def summarize_random(rows: list[dict]) -> list[dict]:
    """One ``random_summary`` row per random k (and one ``random_matched_summary`` row per
    layer-matched null): mean/std/min/max of ``asr``, ``over_refusal``, ``refusal_score_end`` and
    ``harmful_unclosed`` over the seeds, and, when the rows hold the top-k% setting they are
    compared with, its ASR (``top_setting``, ``top_asr``) and ``top_asr_empirical_p``: ``(1 +
    #random sets with ASR <= top's ASR) / (1 + #random sets)``
    (:func:`cliff_lens.stats.empirical_p_value`, ``alternative="less"``). The uniform null's top
    setting is the first top-k% row of that k (the paper ranking's)."""
    out = []
    for kind, (summary_kind, _) in NULLS.items():
        keys = sorted(
            {(r["top_percent"], r.get("matches") or "") for r in rows if r.get("kind") == kind},
            key=lambda t: (t[0], t[1]),
        )
        for k, matches in keys:
            rs = [
                r
                for r in rows
                if r.get("kind") == kind and r["top_percent"] == k and (r.get("matches") or "") == matches
            ]
            name = (
                f"random-{k:g}% ({len(rs)} seeds)"
                if kind == "random"
                else f"random-{k:g}% matched to {matches} ({len(rs)} seeds)"
            )
            row: dict[str, Any] = {"setting": name, "kind": summary_kind, "top_percent": k}
            if matches:
                row["matches"] = matches
            row["seeds"] = [r["seed"] for r in rs]
            for key in ("asr", "over_refusal", "refusal_score_end", "harmful_unclosed"):
                st = _stats([r[key] for r in rs if r.get(key) is not None])
                row.update({f"{key}_{s}": v for s, v in st.items()})
            top = next(
                (
                    r
                    for r in rows
                    if r.get("kind") == "top"
                    and r.get("top_percent") == k
                    and (not matches or r["setting"] == matches)
                ),
                None,
            )
            row["top_setting"] = None if top is None else top["setting"]
            row["top_asr"] = None if top is None else top["asr"]
            row["top_asr_empirical_p"] = (
                None
                if top is None
                else empirical_p_value(top["asr"], [r["asr"] for r in rs], alternative="less")
            )
            out.append(row)
    return out


@dataclass
class AblationSetting:
    """One row of ``ablation.json``: a setting as :func:`attack_success` returns it, or the
    ``random_summary`` row of one k (:func:`summarize_random`).

    ``row`` holds every key as written (the module docstring lists them, in the order written);
    the properties read the ones that stages and the report use."""

    row: dict[str, Any]

    @property
    def setting(self) -> str:
        """The setting's name: ``baseline``, ``top-3%``, ``top-3% contrast``, ``random-3% seed 0``."""
        return str(self.row["setting"])

    @property
    def kind(self) -> str | None:
        """``baseline``, ``custom``, ``top``, ``random`` or ``random_summary``."""
        return self.row.get("kind")

    @property
    def top_percent(self) -> float | None:
        """The k of a top-k% / random-k% setting (``None`` otherwise)."""
        return self.row.get("top_percent")

    @property
    def heads(self) -> list[tuple[int, int]]:
        """The ablated ``(layer, head)`` pairs (none for the baseline and the summaries)."""
        return [(int(h[0]), int(h[1])) for h in self.row.get("heads") or []]

    @property
    def is_summary(self) -> bool:
        """A ``random_summary`` / ``random_matched_summary`` row (not a setting that ran)."""
        return self.kind in ("random_summary", "random_matched_summary")


@dataclass
class AblationResults:
    """The run directory's ``ablation.json``: ``{"meta": ..., "settings": [row, ...]}``, every
    setting's row followed by the ``random_summary`` rows, as :func:`attack_success` returns them."""

    settings: list[AblationSetting]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Sequence[dict], meta: dict | None = None) -> AblationResults:
        """Wrap :func:`attack_success`'s rows (kept as they are, not copied)."""
        return cls([AblationSetting(r) for r in rows], dict(meta or {}))

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row as :func:`attack_success` returns it (the file's ``settings`` list)."""
        return [s.row for s in self.settings]

    @property
    def measured(self) -> list[AblationSetting]:
        """The settings that ran (every row but the random summaries)."""
        return [s for s in self.settings if not s.is_summary]

    @property
    def random_summaries(self) -> list[AblationSetting]:
        """The ``random_summary`` rows, one per random k."""
        return [s for s in self.settings if s.is_summary]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``ablation.json``."""
        return {"meta": self.meta, "settings": [s.row for s in self.settings]}

    def save(self, path: Any) -> Any:
        """Write ``ablation.json`` atomically; returns the path."""
        from .io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Any) -> AblationResults:
        """Read an ``ablation.json`` written by :meth:`save` (or :func:`save_ablation_results`)."""
        import json
        from pathlib import Path

        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(d, dict) or not isinstance(d.get("settings"), list):
            raise ValueError(f"{path} has no 'settings' list; write it with AblationResults.save")
        return cls.from_rows(d["settings"], d.get("meta"))


def save_ablation_results(path: Any, rows: list[dict], meta: dict | None = None) -> Any:
    """Write the run directory's ``ablation.json`` (``{"meta": ..., "settings": rows}``) atomically."""
    return AblationResults.from_rows(rows, meta).save(path)
