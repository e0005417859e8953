"""Generate reasoning rollouts with a HookedTransformer, or import them from another engine.

:func:`generate_rollouts` runs batched generation with LEFT padding, an explicit attention mask
and TransformerLens' KV cache (our own loop: TL's ``generate`` infers the mask from pad-token
ids, which breaks when the pad token also occurs in the prompt, e.g. pad == eos), splits every
completion into thinking / answer with the reasoning template, and appends finished rollouts to
a JSONL file so that a re-run skips them. :func:`import_rollouts` reads rollouts produced by a
fast engine (vLLM-style JSONL with prompt / output).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cliff_lens._typing import Validated
from cliff_lens.data import Prompt, Rollout, append_rollouts, read_rollouts, write_rollouts
from cliff_lens.fast_forward import fast_forward
from cliff_lens.io import iter_jsonl_numbered

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["generate_rollouts", "import_rollouts", "rollout_id", "sample_next_token", "stop_token_set"]

HookList = Sequence[tuple[str | Callable[[str], bool], Callable]]


def rollout_id(prompt: str, template: str, settings: dict, index: int = 0) -> str:
    """Stable id of a generated rollout: hash of prompt, template name, sampling settings and
    ``index`` (the occurrence number of this prompt text in the prompt list: 0, 1, ... for duplicates)."""
    payload = json.dumps([prompt, template, settings, index], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _kv_cache_cls():
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as C
    except ImportError:  # older TL (absent from TL >= 3.9, which mypy checks against)
        from transformer_lens.past_key_value_caching import (  # type: ignore[import-not-found]
            HookedTransformerKeyValueCache as C,
        )
    return C


def stop_token_set(tokenizer: Any, template: Any, extra: Sequence[int] | None = None) -> set[int]:
    """Token ids that end a rollout: ``extra``, the tokenizer's eos, and the template's
    ``stop_tokens`` that the tokenizer knows (e.g. gpt-oss's ``<|return|>`` and ``<|call|>``)."""
    ids = {int(t) for t in (extra or ())}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[t]) for t in getattr(template, "stop_tokens", ()) if t in vocab)
    return ids


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a generation prompt with BOS exactly once (when the tokenizer uses one)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if len(probe) > 0 and probe[0] == bos:
            ids = [bos] + ids
    return ids


def sample_next_token(
    logits: Float[Tensor, "batch d_vocab"],
    *,
    temperature: float,
    top_p: float,
    generators: Sequence[torch.Generator] | None,
) -> Int[Tensor, "batch"]:
    """Greedy (``temperature == 0``) or temperature / nucleus sampling, one generator per row
    so that a row's sample does not depend on which batch it is in."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(-1)
        drop = (cum - sorted_p) >= top_p  # keep the smallest prefix with mass >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    probs = probs / probs.sum(-1, keepdim=True)
    assert generators is not None
    rows = [torch.multinomial(probs[i].cpu(), 1, generator=generators[i]) for i in range(probs.shape[0])]
    return torch.cat(rows).to(logits.device)


@torch.inference_mode()
def _generate_batch(
    model: HookedTransformer,
    seqs: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generators: list[torch.Generator] | None,
    stop_ids: set[int],
    pad_id: int,
) -> tuple[list[list[int]], list[str]]:
    """Generate for one batch of token-id lists; returns new ids (stop token excluded) and stop reasons."""
    device = model.cfg.device
    B = len(seqs)
    L = max(len(s) for s in seqs)
    tokens = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, L - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, L - len(s) :] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    n_ctx = model.cfg.n_ctx
    steps = min(max_new_tokens, n_ctx - L)
    cache = _kv_cache_cls().init_cache(model.cfg, device, B)
    logits = model(tokens, attention_mask=mask, past_kv_cache=cache, return_type="logits")
    out: list[list[int]] = [[] for _ in range(B)]
    reasons = ["max_new_tokens" if steps >= max_new_tokens else "context"] * B
    done = torch.zeros(B, dtype=torch.bool)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long) if stop_ids else None
    for step in range(steps):
        nxt = sample_next_token(logits[:, -1, :], temperature=temperature, top_p=top_p, generators=generators)
        nxt_cpu = nxt.cpu()
        is_stop = torch.isin(nxt_cpu, stop) if stop is not None else torch.zeros(B, dtype=torch.bool)
        for i in torch.nonzero(~done).flatten().tolist():
            if is_stop[i]:
                reasons[i] = "eos"
            else:
                out[i].append(int(nxt_cpu[i]))
        done |= is_stop
        if bool(done.all()) or step == steps - 1:
            break
        feed = torch.where(done.to(nxt.device), torch.full_like(nxt, pad_id), nxt)
        logits = model(
            feed[:, None],
            attention_mask=torch.ones((B, 1), dtype=torch.long, device=device),
            past_kv_cache=cache,
            return_type="logits",
        )
    return out, reasons


def generate_rollouts(
    model: HookedTransformer,
    prompts: Sequence[str | Prompt],
    *,
    template: Any = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    out: str | os.PathLike | None = None,
    hooks: HookList | None = None,
    tag: str | None = None,
    stop_token_ids: Sequence[int] | None = None,
    source: str | None = None,
    progress: bool = True,
    row_hooks: Callable[[list[int]], HookList] | None = None,
) -> list[Rollout]:
    """Generate a reasoning rollout per prompt with a ``HookedTransformer``.

    Prompts are rendered with the template's generation prompt (which ends inside ``<think>``),
    bucketed by length, left-padded into batches with an attention mask, and decoded with TL's
    KV cache. Batched greedy generation gives the same tokens as one-at-a-time generation.
    Each completion is split into thinking / answer at the template's end-of-thinking marker;
    one that never closes its thinking is kept with ``thinking_closed=False`` and
    ``answer=None``.

    Args:
        model: a ``HookedTransformer`` with ``model.tokenizer`` set.
        prompts: strings or :class:`~cliff_lens.data.Prompt` (their ``harmful`` / ``source`` /
            ``category`` are copied onto the rollouts).
        template: a template name or ``ReasoningTemplate``; default the model's
            ``cliff_template`` attribute, else ``"generic"``.
        max_new_tokens: generation budget per rollout (cut earlier by the model's ``n_ctx``).
        temperature: 0 for greedy, else sampling temperature; ``top_p`` nucleus mass.
        seed: sampling seed; each rollout gets its own generator seeded from ``seed`` and its
            id, so samples do not depend on batching.
        batch_size: prompts per forward pass.
        out: JSONL path. Finished rollouts are appended after every batch; on a re-run,
            prompts whose id is already in the file are skipped (resume).
        hooks: ``[(hook_name_or_filter, fn), ...]`` active during generation (prefill and every
            decoding step, where the position dimension is 1), e.g. head ablations.
        tag: free label (e.g. ``"ablated"``) that enters the id, so variants can share a file.
            Hook names enter the id too.
        stop_token_ids: extra token ids that end a rollout (the tokenizer's eos always does).
        source: dataset name for plain-string prompts.
        progress: show a progress bar.
        row_hooks: ``row_hooks(indices) -> hooks`` for one batch, given the indices (into
            ``prompts``) of its rows in batch order, active for that batch beside ``hooks``: e.g.
            :func:`cliff_lens.ablation.row_ablation_hooks` with one head set per row, so that one
            call generates several ablation settings side by side. Its presence enters the id.

    Returns:
        The rollouts in prompt order (including ones found already finished in ``out``). The
        id is :func:`rollout_id` of prompt, template, settings and occurrence index; the
        settings, seed, model name, token counts and stop reason are in ``meta``.
    """
    from cliff_lens.templates import get_template

    tokenizer = _checked_tokenizer(model, batch_size, max_new_tokens, temperature, top_p)
    tmpl = get_template(
        template if template is not None else getattr(model, "cliff_template", None), tokenizer
    )
    items = [p if isinstance(p, Prompt) else Prompt(text=str(p), source=source or "") for p in prompts]
    if not items:
        raise ValueError("prompts is empty; pass at least one prompt")
    settings = _sampling_settings(max_new_tokens, temperature, top_p, seed, hooks, tag)
    if row_hooks is not None:
        settings["row_hooks"] = True
    ids = _rollout_ids(items, tmpl.name, settings)
    done = _finished_rollouts(out, ids)
    todo = [i for i, rid in enumerate(ids) if rid not in done]

    stop_ids = stop_token_set(tokenizer, tmpl, stop_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    n_ctx = model.cfg.n_ctx
    encoded = _encode_todo(tokenizer, tmpl, items, todo, n_ctx)
    order = sorted(todo, key=lambda i: len(encoded[i]))  # length buckets: little padding
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    model_name = getattr(model.cfg, "model_name", "")
    warned = False
    bar = None
    if progress and batches:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="rollouts", unit="rollout")
    ctx = model.hooks(fwd_hooks=list(hooks)) if hooks else _nullcontext()
    try:
        with ctx, fast_forward(model):
            for batch in batches:
                per_batch = model.hooks(fwd_hooks=list(row_hooks(batch))) if row_hooks else _nullcontext()
                with per_batch:
                    new, reasons = _generate_batch(
                        model,
                        [encoded[i] for i in batch],
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        generators=_row_generators([ids[i] for i in batch], seed, temperature),
                        stop_ids=stop_ids,
                        pad_id=pad_id,
                    )
                if "context" in reasons and not warned:
                    warnings.warn(
                        f"generation cut short by the model context (n_ctx={n_ctx}); stop_reason='context' "
                        "is recorded in meta",
                        stacklevel=2,
                    )
                    warned = True
                fresh = [
                    _to_rollout(
                        tokenizer, tmpl, items[i], ids[i], toks, why, model_name, settings, len(encoded[i])
                    )
                    for i, toks, why in zip(batch, new, reasons)
                ]
                if out is not None:
                    append_rollouts(out, fresh)
                for r in fresh:
                    done[r.id] = r
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return [done[rid] for rid in ids]


def _checked_tokenizer(
    model: HookedTransformer, batch_size: int, max_new_tokens: int, temperature: float, top_p: float
) -> Any:
    """The model's tokenizer, after checking it is set and the generation settings are valid."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "model.tokenizer is None; load the model with cliff_lens.load_model or set model.tokenizer"
        )
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size={batch_size}, max_new_tokens={max_new_tokens}: both must be >= 1")
    if temperature < 0 or not (0 < top_p <= 1):
        raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
    return tokenizer


def _sampling_settings(
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    hooks: HookList | None,
    tag: str | None,
) -> dict[str, Any]:
    """The settings that enter every rollout id and ``meta["sampling"]``."""
    hook_names = sorted(
        h if isinstance(h, str) else getattr(h, "__name__", "filter") for h, _ in (hooks or [])
    )
    return {
        "max_new_tokens": max_new_tokens,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "seed": seed if temperature > 0 else None,
        "hooks": hook_names,
        "tag": tag,
    }


def _rollout_ids(items: Sequence[Prompt], template_name: str, settings: dict[str, Any]) -> list[str]:
    """Rollout id per prompt, numbering repeated prompt texts 0, 1, ... in order."""
    seen: dict[str, int] = {}
    ids = []
    for p in items:
        k = seen.get(p.text, 0)
        seen[p.text] = k + 1
        ids.append(rollout_id(p.text, template_name, settings, k))
    return ids


def _finished_rollouts(out: str | os.PathLike | None, ids: Sequence[str]) -> dict[str, Rollout]:
    """Rollouts with one of ``ids`` already in the JSONL file ``out`` (resume), by id."""
    done: dict[str, Rollout] = {}
    if out is not None and Path(out).exists():
        wanted = set(ids)
        for r in read_rollouts(out, on_error="skip"):
            if r.id in wanted:
                done[r.id] = r
    return done


def _encode_todo(
    tokenizer: Any, tmpl: Any, items: Sequence[Prompt], todo: Sequence[int], n_ctx: int
) -> dict[int, list[int]]:
    """Generation-prompt token ids of the prompts to generate; raises if any does not fit ``n_ctx``."""
    encoded = {i: _encode(tokenizer, tmpl.generation_prompt(items[i].text, tokenizer)) for i in todo}
    too_long = [i for i in todo if len(encoded[i]) >= n_ctx]
    if too_long:
        i = too_long[0]
        raise ValueError(
            f"{len(too_long)} prompt(s) do not fit the model's context (n_ctx={n_ctx}), e.g. prompt {i} "
            f"({len(encoded[i])} tokens: {items[i].text[:60]!r}); shorten or drop them (nothing was generated)"
        )
    return encoded


def _row_generators(batch_ids: Sequence[str], seed: int, temperature: float) -> list[torch.Generator] | None:
    """One generator per rollout, seeded from ``seed`` and its id; ``None`` for greedy decoding."""
    if temperature <= 0:
        return None
    gens = []
    for rid in batch_ids:
        g = torch.Generator()
        g.manual_seed(int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:15], 16))
        gens.append(g)
    return gens


def _to_rollout(
    tokenizer: Any,
    tmpl: Any,
    p: Prompt,
    rid: str,
    toks: list[int],
    why: str,
    model_name: str,
    settings: dict[str, Any],
    n_prompt_tokens: int,
) -> Rollout:
    """Decode one generated completion and split it into a :class:`Rollout` with its ``meta``."""
    from cliff_lens.data import fallback_request_id

    completion = tokenizer.decode(toks, skip_special_tokens=False)
    thinking, answer, closed = tmpl.split(completion)
    meta = {
        **({"category": p.category} if p.category else {}),
        **p.meta,
        "template": tmpl.name,
        "model": model_name,
        "sampling": settings,
        "n_prompt_tokens": n_prompt_tokens,
        "n_new_tokens": len(toks),
        "stop_reason": why,
    }
    return Rollout(
        id=rid,
        prompt=p.text,
        thinking=thinking,
        answer=answer if closed else None,
        source=p.source,
        harmful=p.harmful,
        thinking_closed=closed,
        meta=meta,
        request_id=p.request_id or fallback_request_id(p.text, p.meta),
    )


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


_OUTPUT_KEYS = ("output", "text", "response", "completion", "generated_text", "outputs")
_THINKING_KEYS = ("reasoning_content", "reasoning", "thinking")


def import_rollouts(
    path: str | os.PathLike,
    *,
    prompt_key: str = "prompt",
    output_key: str | None = None,
    thinking_key: str | None = None,
    template: Any = None,
    source: str | None = None,
    harmful: bool | None = None,
    on_error: Validated[Literal["raise", "skip"]] = "raise",
    out: str | os.PathLike | None = None,
) -> list[Rollout]:
    """Import rollouts generated elsewhere (e.g. vLLM) from a JSONL file.

    Each line needs the user's prompt (``prompt_key``) and the completion (``output_key``;
    default: the first of ``output``, ``text``, ``response``, ``completion``,
    ``generated_text``, or vLLM's ``outputs[0].text``). The completion is split into thinking /
    answer with the template (default ``"generic"``: ``<think>...</think>``; a leading
    ``<think>`` is allowed); one that never closes thinking is kept with
    ``thinking_closed=False`` and ``answer=None``. When the file has a separate reasoning
    field (``thinking_key``, default: ``reasoning_content`` / ``reasoning`` / ``thinking`` if
    present), it is the thinking and the output is the answer. Other keys go into ``meta``;
    ``id`` / ``harmful`` / ``source`` keys are used when present. ``out``: also write the
    rollouts there (atomically).
    """
    from cliff_lens.templates import get_template

    tmpl = get_template(template)
    path = Path(path)
    rollouts: list[Rollout] = []
    for lineno, rec in iter_jsonl_numbered(path, on_error=on_error):
        try:
            r = _import_one(
                rec, tmpl, prompt_key, output_key, thinking_key, source or path.stem, harmful, lineno
            )
        except ValueError as e:
            msg = f"{path}: line {lineno}: {e}"
            if on_error == "skip":
                warnings.warn(msg, stacklevel=2)
                continue
            raise ValueError(
                msg + "; fix the record, set prompt_key/output_key, or pass on_error='skip'"
            ) from None
        rollouts.append(r)
    if not rollouts:
        raise ValueError(f"{path}: no rollouts imported (empty file?)")
    if not any(r.thinking_closed for r in rollouts):
        warnings.warn(
            f"{path}: no output contains {tmpl.think_close!r}, so no thinking was closed; the rollouts "
            f"probably use another template than {tmpl.name!r} (pass template=...; see list_templates())",
            stacklevel=2,
        )
    if out is not None:
        write_rollouts(out, rollouts)
    return rollouts


def _import_one(rec, tmpl, prompt_key, output_key, thinking_key, source, harmful, lineno) -> Rollout:
    from cliff_lens.data import fallback_request_id

    if prompt_key not in rec or not isinstance(rec[prompt_key], str):
        raise ValueError(f"no string {prompt_key!r} key (keys: {sorted(rec)})")
    prompt = rec[prompt_key]
    keys = [output_key] if output_key else [k for k in _OUTPUT_KEYS if k in rec][:1]
    if not keys or keys[0] not in rec:
        raise ValueError(f"no output key {output_key or _OUTPUT_KEYS} (keys: {sorted(rec)})")
    okey = keys[0]
    output = rec[okey]
    if isinstance(output, list):  # vLLM RequestOutput-style: outputs=[{"text": ...}, ...]
        output = output[0] if output else None
        if isinstance(output, dict):
            output = output.get("text")
    if not isinstance(output, str):
        raise ValueError(f"{okey!r} is {type(output).__name__}, not a string")
    tkey = thinking_key or next((k for k in _THINKING_KEYS if isinstance(rec.get(k), str)), None)
    if tkey is not None and isinstance(rec.get(tkey), str):
        thinking, answer, closed = rec[tkey].strip("\n"), output.lstrip("\n"), True
        if tmpl.think_close in output:  # the engine left the markers in the output
            _, answer, _ = tmpl.split(output)
    else:
        thinking, answer, closed = tmpl.split(output)
    used = {prompt_key, okey, tkey, "id", "harmful", "source", "refused"}
    meta = {k: v for k, v in rec.items() if k not in used}
    meta["template"] = tmpl.name
    meta["imported_from_line"] = lineno
    rid = rec.get("id")
    if rid in (None, ""):
        rid = hashlib.sha256(json.dumps([prompt, output, lineno], ensure_ascii=False).encode()).hexdigest()[
            :20
        ]
    h = rec.get("harmful", harmful)
    return Rollout(
        id=str(rid),
        prompt=prompt,
        thinking=thinking,
        answer=answer if closed else None,
        source=str(rec.get("source") or source),
        harmful=h if isinstance(h, bool) or h is None else bool(h),
        refused=rec.get("refused") if isinstance(rec.get("refused"), bool) else None,
        thinking_closed=closed,
        meta=meta,
        request_id=fallback_request_id(prompt, meta),  # an engine's own "request_id" stays in meta
    )
