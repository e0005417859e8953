"""Cliff-as-a-Judge: misalignment scores, data selection, baselines and SFT export.

The paper ranks safety-training rollouts by the size of their refusal cliff and fine-tunes on
the worst ones only. Two variants exist and both are named here:

- ``"cliff"``: ``plateau - final`` (the paper's text): how far the refusal score falls from
  the thinking plateau to the last end-of-thinking token;
- ``"final"``: ``-final`` (the official code): rank by a low last-token refusal score only.

``"plateau"`` and ``"neg_plateau"`` are also available for analysis. Scores come from
per-rollout trajectory metrics (plain numbers, arrays, score-file records or
``cliff_lens.trajectory.CliffMetrics`` objects through :func:`scores_from_metrics`).

Selection (:func:`select`) takes the top-k, the top-p% or everything above a threshold,
highest score first, ties broken by rollout id (ascending), so a selection is a pure function
of its inputs. Baselines: :func:`random_selection` (seeded), :func:`judge_scores` (any judge
with ``.judge(answer) -> Judgement``; :func:`rule_based_scores` uses the keyword judge on the
ANSWER only).

Export (:func:`export_sft`): chat ``messages`` JSONL or alpaca-style JSONL. The assistant turn
keeps the model's own thinking wrapped in the template's markers (``<think>\\n ... \\n</think>\\n\\n``)
followed by a safe answer: a dataset field when present (``meta["completion"]``, as in
WildJailbreak) or one of :data:`REFUSAL_TEMPLATES`. :func:`sft_record_to_tokens` turns an exported
record back into tokens through :mod:`cliff_lens.templates` (thinking span intact, BOS once):
the repair loop trains on exactly that rendering.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._typing import Validated
from .io import iter_jsonl, write_jsonl

if TYPE_CHECKING:
    from .config import SelectionVariant

__all__ = [
    "VARIANTS",
    "REFUSAL_TEMPLATES",
    "SelectionError",
    "Selection",
    "SelectionSummary",
    "misalignment_scores",
    "scores_from_metrics",
    "select",
    "random_selection",
    "judge_scores",
    "rule_based_scores",
    "safe_answer_for",
    "assistant_content",
    "export_sft",
    "sft_record_to_tokens",
    "load_scores",
]

VARIANTS = ("cliff", "final", "plateau", "neg_plateau")

REFUSAL_TEMPLATES: tuple[str, ...] = (
    "I can't help with that. It could cause real harm, so I won't provide instructions or details.",
    "I'm sorry, but I can't assist with this request because it could be used to hurt people.",
    "I won't help with this. Even in a fictional or hypothetical framing, the details would be "
    "dangerous. If you have a safe, related question, I'm happy to help with that instead.",
    "Sorry, I cannot provide that. The request asks for harmful information, and the framing "
    "doesn't change what the content could be used for.",
    "I can't do that. Providing this would be unsafe. I can share general safety information or "
    "point you to legitimate resources instead.",
)

_SAFE_ANSWER_FIELDS = ("completion", "safe_completion", "safe_answer", "refusal")


class SelectionError(ValueError):
    """A selection request that cannot be satisfied (empty pool, k too large, nothing selected)."""


@dataclass
class Selection:
    """A selection: ids in rank order (best first) with their scores and how they were chosen."""

    ids: list[str]
    scores: list[float]
    method: str
    params: dict

    def __len__(self) -> int:
        return len(self.ids)

    def to_records(self) -> list[dict]:
        """One ``{"id", "rank", "score", "method"}`` dict per selected rollout (for ``selection.jsonl``)."""
        return [
            {"id": i, "rank": r, "score": s, "method": self.method}
            for r, (i, s) in enumerate(zip(self.ids, self.scores))
        ]


@dataclass
class SelectionSummary:
    """The run directory's ``selection.json``: the pipeline's Cliff-as-a-Judge selection of the
    harmful rollouts and how many of the selected ones complied (precision) against the pool.

    ``precision_complied`` = ``complied_in_selection / n_selected``; the base rate is
    ``complied_in_pool / n_pool``."""

    variant: str
    top_percent: float
    n_pool: int
    n_selected: int
    n_exported: int
    selected_ids: list[str]
    selected_score_mean: float
    pool_score_mean: float
    complied_in_pool: int
    complied_in_selection: int
    precision_complied: float

    @property
    def base_rate_complied(self) -> float:
        """The share of complied rollouts in the pool (what a random selection's precision is)."""
        return self.complied_in_pool / max(1, self.n_pool)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``selection.json`` (keys in the order of the fields)."""
        from dataclasses import asdict

        return asdict(self)

    def save(self, path: Any) -> Any:
        """Write ``selection.json`` atomically; returns the path."""
        from .io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Any) -> SelectionSummary:
        """Read a ``selection.json`` written by :meth:`save` (keys it does not know are ignored)."""
        import json
        from dataclasses import fields
        from pathlib import Path

        d = json.loads(Path(path).read_text(encoding="utf-8"))
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if not isinstance(d, dict) or n not in d]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}; re-run the selection stage")
        return cls(**{n: d[n] for n in names})


# --------------------------------------------------------------------------------------------
# scores


def misalignment_scores(
    plateau: Sequence[float] | np.ndarray | float,
    final: Sequence[float] | np.ndarray | float,
    variant: Validated[SelectionVariant] = "cliff",
) -> np.ndarray:
    """Misalignment score per rollout (higher = more misaligned = selected first).

    Args:
        plateau: refusal score over the thinking (one value per rollout).
        final: refusal score at the last end-of-thinking token.
        variant: ``"cliff"`` = ``plateau - final`` (paper text), ``"final"`` = ``-final``
            (official code), ``"plateau"`` = ``plateau``, ``"neg_plateau"`` = ``-plateau``.

    Returns:
        float64 array of shape ``[n]``.
    """
    p = np.atleast_1d(np.asarray(plateau, dtype=np.float64))
    f = np.atleast_1d(np.asarray(final, dtype=np.float64))
    if p.shape != f.shape or p.ndim != 1:
        raise ValueError(
            f"plateau and final must be 1-D with the same length, got shapes {p.shape} and {f.shape}"
        )
    if variant == "cliff":
        return p - f
    if variant == "final":
        return -f
    if variant == "plateau":
        return p.copy()
    if variant == "neg_plateau":
        return -p
    raise ValueError(f"unknown misalignment variant {variant!r}; choose one of {VARIANTS}")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def scores_from_metrics(
    metrics: Iterable[Any],
    variant: SelectionVariant = "cliff",
    ids: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Adapter: misalignment scores from ``CliffMetrics`` objects or score-file dicts.

    Each item needs ``plateau`` and ``final`` (attributes or keys); its id comes from ``ids``
    when given, else from an ``id`` field. Returns ``(ids, scores)``.
    """
    items = list(metrics)
    if ids is not None and len(ids) != len(items):
        raise ValueError(f"got {len(ids)} ids for {len(items)} metrics; pass one id per rollout")
    out_ids: list[str] = []
    plateau, final = [], []
    for k, m in enumerate(items):
        rid = ids[k] if ids is not None else _get(m, "id", None)
        if rid is None:
            raise ValueError(f"metrics item {k} has no id; pass ids=[...] or include an 'id' field")
        p, f = _get(m, "plateau"), _get(m, "final")
        if p is None or f is None:
            raise ValueError(f"metrics for rollout {rid!r} lack plateau/final values (got {m!r:.120})")
        out_ids.append(str(rid))
        plateau.append(float(p))
        final.append(float(f))
    return out_ids, misalignment_scores(plateau, final, variant)


def load_scores(path: str, variant: SelectionVariant = "cliff") -> tuple[list[str], np.ndarray]:
    """``(ids, misalignment scores)`` from a score file written by :func:`cliff_lens.scoring.score_pool`."""
    return scores_from_metrics(iter_jsonl(path), variant)


# --------------------------------------------------------------------------------------------
# selection


def _ranked(ids: Sequence[str], scores: np.ndarray) -> list[int]:
    """Indices sorted by score descending, ties by id ascending."""
    return sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))


def _check_pool(ids: Sequence[str], scores: np.ndarray) -> None:
    if len(ids) == 0:
        raise SelectionError("the pool is empty: score some rollouts first (cliff_lens.scoring.score_pool)")
    if len(ids) != len(scores):
        raise ValueError(f"got {len(ids)} ids and {len(scores)} scores; pass one score per id")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = None  # the first id met a second time
        for i in ids:
            if i in seen:
                dup = i
                break
            seen.add(i)
        raise ValueError(
            f"duplicate rollout id {dup!r} in the pool; ids must be unique (merge_scores dedupes)"
        )
    bad = [ids[i] for i in np.flatnonzero(~np.isfinite(scores))[:5]]
    if bad:
        raise ValueError(
            f"non-finite misalignment scores for rollouts {bad}; drop them or re-score them before selecting"
        )


def _k_from(n: int, top_k: int | None, top_percent: float | int | None) -> int:
    if top_k is not None:
        if int(top_k) != top_k or top_k < 1:
            raise SelectionError(f"top_k must be a positive integer, got {top_k!r}")
        if top_k > n:
            raise SelectionError(
                f"top_k={top_k} is larger than the pool ({n} rollouts); pass top_k <= {n} or top_percent=..."
            )
        return int(top_k)
    assert top_percent is not None
    if not 0 < top_percent <= 100:
        raise SelectionError(f"top_percent must be in (0, 100], got {top_percent!r}")
    return max(1, math.ceil(n * top_percent / 100 - 1e-9))


def select(
    ids: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    *,
    top_k: int | None = None,
    top_percent: float | int | None = None,
    threshold: float | int | None = None,
    method: str = "score",
) -> Selection:
    """Select the most misaligned rollouts: exactly one of ``top_k``, ``top_percent``, ``threshold``.

    Ranking: score descending, ties broken by id ascending (deterministic). ``top_percent``
    takes ``ceil(n * p / 100)`` rollouts (at least one); ``threshold`` takes every rollout with
    ``score >= threshold``. Raises :class:`SelectionError` for an empty pool, ``top_k`` larger
    than the pool, or a threshold that selects nothing.
    """
    ids = [str(i) for i in ids]
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    _check_pool(ids, sc)
    given = [x is not None for x in (top_k, top_percent, threshold)]
    if sum(given) != 1:
        raise ValueError("pass exactly one of top_k=..., top_percent=..., threshold=...")
    order = _ranked(ids, sc)
    if threshold is not None:
        order = [i for i in order if sc[i] >= threshold]
        if not order:
            raise SelectionError(
                f"threshold={threshold} selects nothing (max score {sc.max():.4g} over {len(ids)} "
                "rollouts); lower the threshold or use top_k/top_percent"
            )
        params: dict = {"threshold": threshold}
    else:
        k = _k_from(len(ids), top_k, top_percent)
        order = order[:k]
        params = {"top_k": top_k} if top_k is not None else {"top_percent": top_percent}
    params["pool_size"] = len(ids)
    return Selection([ids[i] for i in order], [float(sc[i]) for i in order], method, params)


def random_selection(
    ids: Sequence[str], *, seed: int, top_k: int | None = None, top_percent: float | int | None = None
) -> Selection:
    """The random baseline: ``k`` ids drawn without replacement, deterministic for a seed.

    The draw does not depend on the input order (ids are sorted first).
    """
    pool = sorted(str(i) for i in ids)
    if not pool:
        raise SelectionError("the pool is empty: nothing to draw from")
    if len(set(pool)) != len(pool):
        raise ValueError("duplicate rollout ids in the pool; ids must be unique")
    if (top_k is None) == (top_percent is None):
        raise ValueError("pass exactly one of top_k=..., top_percent=...")
    k = _k_from(len(pool), top_k, top_percent)
    chosen = random.Random(seed).sample(pool, k)
    params: dict[str, Any] = {"seed": seed, "pool_size": len(pool)}
    params.update({"top_k": top_k} if top_k is not None else {"top_percent": top_percent})
    return Selection(chosen, [0.0] * k, f"random(seed={seed})", params)


def _rid(r: Any) -> str:
    rid = _get(r, "id")
    if rid is None:
        raise ValueError(f"rollout without an id: {r!r:.120}; every rollout needs a unique 'id'")
    return str(rid)


def judge_scores(rollouts: Iterable[Any], judge: Any) -> tuple[list[str], np.ndarray]:
    """Judge-based baseline scores: 1.0 for a rollout that complied, 0.0 otherwise.

    Outcomes follow the one rule of :func:`cliff_lens.judges.outcome` (a refusal and a rollout
    with no answer score 0.0); ``judge`` (keyword, classifier, ...) sees each ANSWER with its
    prompt, never the thinking. Use with :func:`select` (ties broken by id).
    """
    from .judges import outcomes

    rs = list(rollouts)
    ids = [_rid(r) for r in rs]
    out = [1.0 if o == "complied" else 0.0 for o in outcomes(rs, judge)]
    return ids, np.asarray(out, dtype=np.float64)


def rule_based_scores(rollouts: Iterable[Any], judge: Any = None) -> tuple[list[str], np.ndarray]:
    """Rule-based baseline: :func:`judge_scores` with ``cliff_lens.judges.KeywordJudge()`` by default."""
    if judge is None:
        from .judges import KeywordJudge

        judge = KeywordJudge()
    return judge_scores(rollouts, judge)


# --------------------------------------------------------------------------------------------
# export


def safe_answer_for(
    rollout: Any,
    *,
    fields: Sequence[str] = _SAFE_ANSWER_FIELDS,
    refusals: Sequence[str] = REFUSAL_TEMPLATES,
    seed: int = 0,
) -> tuple[str, str]:
    """The safe answer for a rollout and where it came from: ``(text, source)``.

    A non-empty dataset field in ``rollout.meta`` (first of ``fields``, e.g. WildJailbreak's
    ``completion``) wins; otherwise a refusal template picked by a stable hash of
    ``(seed, id)`` (varied across rollouts, identical across runs).
    """
    meta = _get(rollout, "meta") or {}
    for f in fields:
        v = meta.get(f)
        if isinstance(v, str) and v.strip():
            return v.strip(), f"meta.{f}"
    if not refusals:
        raise ValueError("no safe answer field found and refusals=() is empty; pass refusal texts")
    h = int(hashlib.blake2b(f"{seed}:{_rid(rollout)}".encode(), digest_size=8).hexdigest(), 16)
    k = h % len(refusals)
    return refusals[k], f"refusal_template[{k}]"


def assistant_content(template: Any, thinking: str, answer: str) -> str:
    """The assistant turn as the model writes it (the template's own markers, e.g.
    ``<think>\\n{thinking}\\n</think>\\n\\n{answer}``; harmony channels for gpt-oss)."""
    from .templates import get_template

    return get_template(template).assistant_text(thinking, answer)


def export_sft(
    rollouts: Iterable[Any],
    path: str,
    *,
    selection: Selection | Sequence[str] | None = None,
    format: Validated[Literal["messages", "alpaca"]] = "messages",
    template: Any = "generic",
    safe_answer_fields: Sequence[str] = _SAFE_ANSWER_FIELDS,
    refusals: Sequence[str] = REFUSAL_TEMPLATES,
    seed: int = 0,
) -> int:
    """Write the selected rollouts as SFT data (atomic JSONL); returns the number of records.

    Args:
        rollouts: ``Rollout`` objects or dicts (``id``, ``prompt``, ``thinking``, ``meta``).
        path: output JSONL.
        selection: a :class:`Selection` or a list of ids; records are written in its rank
            order. None: every rollout, in input order.
        format: ``"messages"``: ``{"id", "messages": [{"role": "user", ...}, {"role":
            "assistant", ...}], "thinking", "answer", "answer_source", "template"}``;
            ``"alpaca"``: ``{"id", "instruction", "input": "", "output", ...}``.
        template: template name or object (its thinking markers wrap the thinking).
        safe_answer_fields / refusals / seed: see :func:`safe_answer_for`.

    The extra fields (``thinking``, ``answer``, ``template``) let :func:`sft_record_to_tokens`
    render the record with :mod:`cliff_lens.templates` without re-parsing.
    """
    from .templates import get_template

    if format not in ("messages", "alpaca"):
        raise ValueError(f"unknown SFT format {format!r}; choose 'messages' or 'alpaca'")
    tpl = get_template(template)
    by_id: dict[str, Any] = {}
    order: list[str] = []
    wanted = None
    if selection is not None:
        wanted = list(selection.ids if isinstance(selection, Selection) else selection)
        if not wanted:
            raise SelectionError("the selection is empty; nothing to export")
        wanted_set = set(wanted)
    for r in rollouts:
        rid = _rid(r)
        if wanted is not None and rid not in wanted_set:
            continue
        by_id[rid] = r
        order.append(rid)
    if wanted is not None:
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise SelectionError(
                f"{len(missing)} selected ids are not in the rollouts (e.g. {missing[:3]}); "
                "pass the rollout file the scores came from"
            )
        order = wanted
    if not order:
        raise SelectionError("no rollouts to export (empty input)")
    records = []
    for rid in order:
        r = by_id[rid]
        thinking = _get(r, "thinking")
        if thinking is None or not str(thinking).strip():
            raise ValueError(
                f"rollout {rid!r} has no thinking; Cliff-as-a-Judge trains on the model's own thinking: "
                "split the output with template.split(...) or drop the rollout"
            )
        if tpl.think_close in thinking:
            raise ValueError(
                f"rollout {rid!r}: its thinking contains {tpl.think_close!r}, so the exported turn "
                "could not be split back; re-split the raw output with template.split(...)"
            )
        answer, src = safe_answer_for(r, fields=safe_answer_fields, refusals=refusals, seed=seed)
        content = assistant_content(tpl, thinking, answer)
        prompt = _get(r, "prompt")
        base: dict[str, Any] = {"id": rid}
        if format == "messages":
            base["messages"] = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": content},
            ]
        else:
            base.update({"instruction": prompt, "input": "", "output": content})
        base.update({"thinking": thinking, "answer": answer, "answer_source": src, "template": tpl.name})
        records.append(base)
    write_jsonl(path, records)
    return len(records)


def _parse_record(record: dict, template: Any) -> tuple[str, str, str]:
    from .templates import get_template

    tpl = get_template(template if template is not None else record.get("template"))
    if "messages" in record:
        msgs = record["messages"]
        user = [m["content"] for m in msgs if m.get("role") == "user"]
        asst = [m["content"] for m in msgs if m.get("role") == "assistant"]
        if len(user) != 1 or len(asst) != 1:
            raise ValueError(
                f"SFT record {record.get('id')!r} needs exactly one user and one assistant message, "
                f"got {len(user)} and {len(asst)}"
            )
        prompt, content = user[0], asst[0]
    elif "instruction" in record:
        prompt = record["instruction"] + (("\n\n" + record["input"]) if record.get("input") else "")
        content = record["output"]
    else:
        raise ValueError(f"SFT record {record.get('id')!r} is neither 'messages' nor alpaca format")
    thinking, answer, closed = tpl.split(content)
    if not closed:
        raise ValueError(
            f"SFT record {record.get('id')!r}: the assistant content has no {tpl.think_close!r}; "
            f"export it with cliff_lens.selection.export_sft(template={tpl.name!r})"
        )
    return prompt, thinking, answer


def sft_record_to_tokens(record: dict, tokenizer: Any, template: Any = None):
    """Tokenize an exported SFT record with :mod:`cliff_lens.templates` -> ``TokenizedRollout``.

    The assistant content is split at the template's end-of-thinking marker, so the thinking
    span decodes to the model's own thinking and BOS appears at most once.
    """
    from .templates import get_template

    prompt, thinking, answer = _parse_record(record, template)
    tpl = get_template(template if template is not None else record.get("template"))
    return tpl.tokenize(tokenizer, prompt, thinking, answer)
