"""Scoring a large rollout pool for Cliff-as-a-Judge: streamed, sharded, resumable.

:func:`score_pool` reads rollouts one line at a time, keeps the ones of its shard, scores them
in batches with a refusal probe (per-token refusal score over prompt + thinking +
end-of-thinking, answer dropped) and appends one JSONL line per rollout::

    {"id", "plateau", "final", "cliff", "steepest_drop", "steepest_drop_pos",
     "steepest_drop_index", "n_plateau", "note", "n_tokens", "n_thinking",
     "harmful", "refused", "source", "thinking_closed"}

- the metrics are :class:`cliff_lens.trajectory.CliffMetrics`: ``plateau`` = mean refusal
  score over the late thinking (last ``plateau_window`` thinking tokens), ``final`` = score at
  the last end-of-thinking token (``\\n</think>\\n\\n``), ``cliff = plateau - final``.
- Shards: rollout ``id`` -> a stable bucket ``blake2b(id) % n_buckets``; shard ``i/n`` owns the
  buckets with ``bucket % n == i``. Batches are formed per bucket, so every rollout is scored
  in exactly the same batch whatever ``n`` is, and ``shard 0/2 + shard 1/2 + merge_scores``
  equals a single run bit for bit (padding cannot introduce float differences between runs).
- Resume: ids already in the output file are not written again. A truncated last line (a
  crash mid-write) is cut off first. A batch holding any unfinished rollout is recomputed
  whole (same batch, same numbers), so a resumed run equals an uninterrupted one exactly.
- Memory: at most ``n_buckets * batch_size`` rollouts are held at a time, plus the set of ids
  seen by this shard (to reject duplicate ids); the pool itself is never loaded.

The streaming engine, :func:`score_stream`, takes any ``score_fn(list_of_rollouts) ->
list_of_metric_dicts``; :func:`probe_scorer` builds the one for a HookedTransformer + probe.
Multi-GPU: run ``score_pool(..., shard=(i, n))`` in n processes (a SLURM array, torchrun,
accelerate launch), then :func:`merge_scores`. See ``docs/selection.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._typing import Validated
from .io import append_jsonl, atomic_write_text, iter_jsonl

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ScoringError",
    "parse_shard",
    "bucket_of",
    "shard_from_env",
    "shard_of",
    "score_stream",
    "score_pool",
    "probe_scorer",
    "merge_scores",
    "iter_pool",
    "check_same_model",
]

ScoreFn = Callable[[list[Any]], list[dict]]


class ScoringError(ValueError):
    """Bad scoring input (no thinking, mismatched model, bad shard spec, conflicting shards)."""


# --------------------------------------------------------------------------------------------
# shards


def parse_shard(shard: str | tuple[int, int] | Sequence[int] | None) -> tuple[int, int]:
    """``"i/n"`` or ``(i, n)`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``; ``"auto"``: :func:`shard_from_env`."""
    if shard is None:
        return 0, 1
    if shard == "auto":
        return shard_from_env()
    try:
        if isinstance(shard, str):
            a, b = shard.split("/")
            i, n = int(a), int(b)
        else:
            i, n = (int(x) for x in shard)
    except (ValueError, TypeError):
        raise ScoringError(f"bad shard {shard!r}; write it as 'i/n', e.g. '0/4' (shard 0 of 4)") from None
    if n < 1 or not 0 <= i < n:
        raise ScoringError(f"bad shard {shard!r}: need 0 <= i < n (e.g. '0/4' ... '3/4')")
    return i, n


def shard_from_env(env: dict | None = None) -> tuple[int, int]:
    """The shard of this process from launcher variables: ``(i, n)``.

    ``torchrun`` / ``accelerate launch``: ``RANK`` + ``WORLD_SIZE``; SLURM arrays:
    ``SLURM_ARRAY_TASK_ID`` + ``SLURM_ARRAY_TASK_COUNT`` (minus ``SLURM_ARRAY_TASK_MIN``);
    ``(0, 1)`` when none is set. Use it for ``--shard auto``.
    """
    e = os.environ if env is None else env
    if "RANK" in e and "WORLD_SIZE" in e:
        return parse_shard((int(e["RANK"]), int(e["WORLD_SIZE"])))
    if "SLURM_ARRAY_TASK_ID" in e and "SLURM_ARRAY_TASK_COUNT" in e:
        i = int(e["SLURM_ARRAY_TASK_ID"]) - int(e.get("SLURM_ARRAY_TASK_MIN", 0))
        return parse_shard((i, int(e["SLURM_ARRAY_TASK_COUNT"])))
    return 0, 1


def bucket_of(rollout_id: str, n_buckets: int) -> int:
    """Stable bucket of a rollout id (``blake2b`` of the UTF-8 id, independent of Python's hash seed)."""
    h = hashlib.blake2b(str(rollout_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") % n_buckets


def shard_of(rollout_id: str, n: int, n_buckets: int = 64) -> int:
    """The shard (of ``n``) that scores a rollout id."""
    return bucket_of(rollout_id, n_buckets) % n


# --------------------------------------------------------------------------------------------
# input


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def iter_pool(path: str | os.PathLike, *, on_error: Literal["raise", "skip"] = "raise") -> Iterator[Any]:
    """Stream rollouts from a JSONL file (``cliff_lens.data.read_rollouts`` when available, else dicts)."""
    try:
        from .data import read_rollouts
    except ImportError:
        yield from iter_jsonl(path, on_error=on_error)
        return
    yield from read_rollouts(path, on_error=on_error)


def _model_key(name: Any) -> str:
    return str(name).rstrip("/").split("/")[-1].strip().lower()


def _rollout_model(r: Any) -> str | None:
    meta = _get(r, "meta") or {}
    for k in ("model", "model_name", "generator"):
        if meta.get(k):
            return str(meta[k])
    return None


def check_same_model(probe_model: str | None, rollout: Any) -> None:
    """Raise :class:`ScoringError` if the rollout's ``meta["model"]`` names another model than the probe's.

    Names are compared by their last path component, case-insensitively (a hub id and a local
    directory of the same model match). Missing names on either side are not checked.
    """
    rm = _rollout_model(rollout)
    if probe_model and rm and _model_key(probe_model) != _model_key(rm):
        raise ScoringError(
            f"rollout {_get(rollout, 'id')!r} was generated by {rm!r} but the probe was trained on "
            f"{probe_model!r}; Cliff-as-a-Judge scores a model's OWN rollouts. Generate rollouts with "
            "the probe's model, or pass check_model=False if the names differ but the model is the same"
        )


# --------------------------------------------------------------------------------------------
# metrics


def probe_scorer(
    model: HookedTransformer,
    probe: Any,
    *,
    template: Any = None,
    plateau: Literal["late", "all"] = "late",
    plateau_window: int = 32,
    exclude_last: int = 0,
    strict_name: bool = True,
) -> ScoreFn:
    """A ``score_fn`` for :func:`score_stream` built on :mod:`cliff_lens.trajectory`.

    Each rollout is rendered with the template (prompt + thinking + end-of-thinking, the answer
    dropped, BOS once), scored per token by ``trajectory.compute_trajectories`` (one forward
    per batch, the probe applied inside the hook, ``stop_at_layer``) and summarised by
    ``trajectory.cliff_metrics`` (``plateau``: mean over the last ``plateau_window`` thinking
    tokens, minus the last ``exclude_last``, or all of them with ``plateau="all"``; ``final``:
    the last end-of-thinking token). The template is ``template``, else
    ``probe.meta["template"]``, else ``model.cliff_template``, else ``"generic"``.
    """
    from .templates import get_template
    from .trajectory import cliff_metrics, compute_trajectories

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ScoringError("the model has no tokenizer attached; load it with cliff_lens.load_model(...)")
    meta = getattr(probe, "meta", None) or {}
    tname = template or meta.get("template") or getattr(model, "cliff_template", None) or "generic"
    tpl = get_template(tname, tokenizer=tokenizer)
    probe.check_model(model, strict_name=strict_name)

    def score_fn(rollouts: list[Any]) -> list[dict]:
        recs = []
        for r in rollouts:
            tr = tpl.tokenize(tokenizer, _get(r, "prompt"), _get(r, "thinking"), "", include_answer=False)
            tr = tr.truncate("end_of_thinking")
            tr.meta["id"] = _get(r, "id")
            recs.append(tr)
        trajs = compute_trajectories(
            model, recs, probe, batch_size=max(1, len(recs)), progress=False, strict_name=strict_name
        )
        ms = cliff_metrics(trajs, plateau=plateau, plateau_window=plateau_window, exclude_last=exclude_last)
        out = []
        for tr, m in zip(recs, ms):
            d = m.to_dict()
            d.pop("id", None)
            d["n_tokens"] = int(tr.spans["end_of_thinking"][1])
            d["n_thinking"] = int(tr.spans["thinking"][1] - tr.spans["thinking"][0])
            out.append(d)
        return out

    return score_fn


# --------------------------------------------------------------------------------------------
# streaming engine


def _cut_partial_last_line(path: Path) -> None:
    """Remove a trailing fragment without a newline (a write cut off by a crash), with a warning."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        complete = f.read(1) == b"\n"
    if not complete:
        append_jsonl(path, [])  # appending cuts a partial last line off first
        warnings.warn(
            f"{path}: removed a truncated last line (an interrupted write); it will be re-scored",
            stacklevel=3,
        )


def _done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    _cut_partial_last_line(path)
    return {str(r["id"]) for r in iter_jsonl(path)}


def score_stream(
    rollouts: Iterable[Any],
    score_fn: ScoreFn,
    out_path: str | os.PathLike,
    *,
    shard: str | tuple[int, int] | None = None,
    batch_size: int = 8,
    n_buckets: int = 64,
    on_missing_thinking: Validated[Literal["raise", "skip"]] = "raise",
    probe_model: str | None = None,
    check_model: bool = True,
    progress: bool = False,
) -> dict:
    """Score a stream of rollouts into ``out_path`` (JSONL, appended per batch; resumable).

    Args:
        rollouts: any iterable of ``Rollout`` objects or dicts (consumed once, lazily).
        score_fn: ``list of rollouts -> list of metric dicts`` (``plateau``, ``final``, ...).
        out_path: output JSONL; existing ids are kept and not re-written (resume).
        shard: ``"i/n"`` or ``(i, n)``: score only the rollouts of shard ``i`` of ``n``.
        batch_size: rollouts per ``score_fn`` call (per bucket).
        n_buckets: number of id buckets; must be the same for every shard and run that is
            merged or compared; ``n`` may not exceed it.
        on_missing_thinking: ``"raise"`` (default) or ``"skip"`` rollouts whose thinking is
            missing/empty (skips are counted in the summary).
        probe_model / check_model: reject rollouts whose ``meta["model"]`` names another model.

    Returns:
        summary dict: ``{"shard", "seen", "scored", "skipped_done", "skipped_no_thinking",
        "out"}`` (``seen`` counts this shard's rollouts).
    """
    i, n = parse_shard(shard)
    _check_stream_args(n, n_buckets, batch_size)
    out = Path(out_path)
    done = _done_ids(out)
    n_done_before = len(done)
    seen: set[str] = set()
    buckets: dict[int, list[Any]] = {}
    stats: dict[str, Any] = {
        "seen": 0,
        "scored": 0,
        "skipped_done": 0,
        "skipped_no_thinking": 0,
        "total_in_file": 0,
    }
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"score shard {i}/{n}", unit="rollout")

    for r in rollouts:
        stats["total_in_file"] += 1
        rid = _required_id(r)
        b = bucket_of(rid, n_buckets)
        if b % n != i:
            continue
        if rid in seen:
            raise ScoringError(f"duplicate rollout id {rid!r} in the pool; ids must be unique")
        seen.add(rid)
        stats["seen"] += 1
        if not _has_thinking(r, rid, on_missing_thinking):
            stats["skipped_no_thinking"] += 1
            continue
        if check_model:
            check_same_model(probe_model, r)
        buckets.setdefault(b, []).append(r)
        if len(buckets[b]) >= batch_size:
            _score_batch(buckets.pop(b, []), score_fn, out, done, stats, bar)
    for b in sorted(buckets):
        _score_batch(buckets.pop(b, []), score_fn, out, done, stats, bar)
    if bar is not None:
        bar.close()
    _check_stream_outcome(stats, i, n)
    stats["resumed_with"] = n_done_before
    stats["shard"] = f"{i}/{n}"
    stats["out"] = str(out)
    return stats


def _check_stream_args(n: int, n_buckets: int, batch_size: int) -> None:
    """Raise :class:`ScoringError` for a shard count above ``n_buckets`` or a batch size below 1."""
    if n > n_buckets:
        raise ScoringError(
            f"shard count n={n} exceeds n_buckets={n_buckets}; pass n_buckets >= n (the same for all runs)"
        )
    if batch_size < 1:
        raise ScoringError(f"batch_size must be >= 1, got {batch_size}")


def _required_id(r: Any) -> str:
    """The rollout's id as a string; :class:`ScoringError` if it has none."""
    rid = _get(r, "id")
    if rid is None:
        raise ScoringError(
            f"rollout without an id in the pool: {r!r:.120}; every rollout needs a unique 'id'"
        )
    return str(rid)


def _has_thinking(r: Any, rid: str, on_missing_thinking: str) -> bool:
    """Whether the rollout has thinking; without it, ``False`` to skip it or :class:`ScoringError`."""
    thinking = _get(r, "thinking")
    if thinking is None or not str(thinking).strip():
        if on_missing_thinking == "skip":
            return False
        raise ScoringError(
            f"rollout {rid!r} has no thinking; the refusal cliff is measured over the thinking. "
            "Split raw outputs into thinking/answer with template.split(...) (or generate with a "
            "reasoning template), or pass on_missing_thinking='skip'"
        )
    return True


def _score_batch(
    batch: list[Any], score_fn: ScoreFn, out: Path, done: set[str], stats: dict[str, Any], bar: Any
) -> None:
    """Score one bucket's batch (whole, if any rollout is unfinished) and append its unfinished rollouts."""
    if not batch:
        return
    todo = [str(_get(r, "id")) not in done for r in batch]
    if not any(todo):
        stats["skipped_done"] += len(batch)
        return
    metrics = score_fn(batch)
    if len(metrics) != len(batch):
        raise ScoringError(f"score_fn returned {len(metrics)} results for {len(batch)} rollouts")
    lines = []
    for r, m, t in zip(batch, metrics, todo):
        if not t:
            stats["skipped_done"] += 1
            continue
        rec: dict[str, Any] = {"id": str(_get(r, "id"))}
        rec.update(m)
        for k in ("harmful", "refused", "source"):
            rec.setdefault(k, _get(r, k))
        rec.setdefault("thinking_closed", bool(_get(r, "thinking_closed", True)))
        lines.append(rec)
    append_jsonl(out, lines)
    done.update(x["id"] for x in lines)
    stats["scored"] += len(lines)
    if bar is not None:
        bar.update(len(lines))


def _check_stream_outcome(stats: dict[str, Any], i: int, n: int) -> None:
    """Raise :class:`ScoringError` if the pool was empty or no rollout of this shard had thinking."""
    if stats["total_in_file"] == 0:
        raise ScoringError("the rollout pool is empty; generate or import rollouts first")
    if stats["seen"] and stats["seen"] == stats["skipped_no_thinking"]:
        raise ScoringError(
            f"no rollout of shard {i}/{n} has thinking ({stats['seen']} skipped); this pool cannot be "
            "scored for a refusal cliff: use a reasoning model's rollouts"
        )


def score_pool(
    model: HookedTransformer,
    probe: Any,
    rollouts_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    shard: str | tuple[int, int] | None = None,
    batch_size: int = 8,
    template: Any = None,
    plateau: Literal["late", "all"] = "late",
    plateau_window: int = 32,
    exclude_last: int = 0,
    n_buckets: int = 64,
    check_model: bool = True,
    strict_name: bool = True,
    on_missing_thinking: Literal["raise", "skip"] = "raise",
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
) -> dict:
    """Score every rollout of a JSONL pool (one shard of it) with a refusal probe; see the module doc.

    Args:
        model: a ``HookedTransformer`` with its tokenizer (``cliff_lens.load_model``).
        probe: a ``RefusalProbe`` (``hook``, ``layer``, ``score(acts)``, ``meta["model"]``).
        rollouts_path: rollouts JSONL (streamed; malformed lines per ``on_error``).
        out_path: scores JSONL (appended, resumable).
        shard: ``"i/n"`` / ``(i, n)``; merge the shards with :func:`merge_scores`.
        batch_size / n_buckets / on_missing_thinking / check_model: see :func:`score_stream`.
        template / plateau / plateau_window / exclude_last / strict_name: see :func:`probe_scorer`.
    """
    fn = probe_scorer(
        model,
        probe,
        template=template,
        plateau=plateau,
        plateau_window=plateau_window,
        exclude_last=exclude_last,
        strict_name=strict_name,
    )
    meta = getattr(probe, "meta", None) or {}
    probe_model = meta.get("model_name") or meta.get("model")
    with torch.inference_mode():
        return score_stream(
            iter_pool(rollouts_path, on_error=on_error),
            fn,
            out_path,
            shard=shard,
            batch_size=batch_size,
            n_buckets=n_buckets,
            on_missing_thinking=on_missing_thinking,
            probe_model=probe_model,
            check_model=check_model,
            progress=progress,
        )


def merge_scores(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> int:
    """Merge shard score files into one JSONL sorted by id (deduped; atomic write); returns the count.

    A rollout found in several files must have identical records there (e.g. two runs of the
    same shard); differing records raise :class:`ScoringError`. Truncated last lines of
    shard files (a shard that crashed) are skipped with a warning: re-run that shard to finish it.
    """
    if not paths:
        raise ScoringError("merge_scores got no input files; pass the shard outputs")
    by_id: dict[str, str] = {}  # id -> its JSON line (smaller than parsed dicts)
    src: dict[str, str] = {}
    for p in paths:
        for rec in iter_jsonl(p, on_error="skip"):
            rid = str(rec["id"])
            line = json.dumps(rec, ensure_ascii=False)
            if rid in by_id:
                if by_id[rid] != line:
                    raise ScoringError(
                        f"rollout {rid!r} has different scores in {src[rid]} and {p}; were the shards "
                        "scored with different models, probes or settings? Re-score one of them"
                    )
                continue
            by_id[rid] = line
            src[rid] = str(p)
    atomic_write_text(out, "".join(by_id[k] + "\n" for k in sorted(by_id)))
    return len(by_id)
