"""Repair: a small LoRA SFT loop (peft) on a Cliff-as-a-Judge selection, and a safety evaluation.

:func:`train_lora` fine-tunes an HF causal LM on SFT records exported by
:func:`cliff_lens.selection.export_sft`. Each record is rendered with
:mod:`cliff_lens.templates` exactly as the model generates (chat prefix with the prompt,
``<think>\\n``, thinking, ``\\n</think>\\n\\n``, safe answer, EOS; BOS once) and the loss covers
the assistant tokens only (thinking, end of thinking, answer, EOS). Training is seeded (LoRA
init, batch order) and uses right padding with an attention mask.

:func:`evaluate_safety` generates greedily with HF ``generate`` (batched, left padding), splits
each completion at the end-of-thinking marker and judges the ANSWER only, with the one outcome
rule of :func:`cliff_lens.judges.outcome` (``refused`` / ``complied`` / ``no_answer``):

- ``asr``: ``complied`` harmful prompts / harmful prompts (a no-answer, i.e. thinking never
  closed or a blank answer, is not an attack success; counted in ``no_answer_harmful``);
- ``over_refusal``: ``refused`` harmless prompts / harmless prompts.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["RepairConfig", "sft_example", "train_lora", "evaluate_safety", "generate_answers", "repair"]


@dataclass
class RepairConfig:
    """LoRA SFT settings (all recorded in the results).

    ``target_modules`` default to the attention projections of Llama/Qwen-style models.
    ``max_len``: longer examples raise (the assistant part must not be cut).
    """

    epochs: int = 1
    lr: float = 2e-4
    batch_size: int = 4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_len: int = 1024
    seed: int = 0
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    steps: int | None = None  # exactly this many optimizer steps (cycling through the data) instead of epochs


def _record_id(rec: dict, k: int) -> str:
    return str(rec.get("id", f"#{k}"))


def sft_example(
    record: dict, tokenizer: Any, template: Any = None, max_len: int = 1024
) -> tuple[Int[Tensor, "pos"], Int[Tensor, "pos"]]:
    """``(input_ids, labels)`` of one exported SFT record; labels are -100 before the thinking.

    The EOS token is appended (and trained on) so the model learns to stop after the answer.
    """
    from .selection import sft_record_to_tokens

    tr = sft_record_to_tokens(record, tokenizer, template)
    ids = tr.tokens.tolist()
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    ids_t = torch.tensor(ids, dtype=torch.long)
    labels = ids_t.clone()
    labels[: tr.spans["thinking"][0]] = -100
    if len(ids) > max_len:
        raise ValueError(
            f"SFT record {record.get('id')!r} has {len(ids)} tokens > max_len={max_len}; raise "
            "RepairConfig.max_len or drop the record"
        )
    return ids_t, labels


def _collate(batch: list[tuple[Tensor, Tensor]], pad_id: int) -> dict[str, Tensor]:
    n = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for b, (i, lab) in enumerate(batch):
        ids[b, : len(i)] = i
        labels[b, : len(i)] = lab
        mask[b, : len(i)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _add_lora(
    model: Any,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    layers_to_transform: Sequence[int] | None = None,
) -> Any:
    """Wrap ``model`` in a peft causal-LM LoRA (no bias training) on ``target_modules``.

    ``layers_to_transform``: the layer indices to adapt (``None``: every layer). Injects the
    adapters into ``model`` in place and returns the peft model.
    """
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        layers_to_transform=None if layers_to_transform is None else list(layers_to_transform),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def train_lora(
    model: Any,
    tokenizer: Any,
    records: Iterable[dict],
    *,
    template: Any = None,
    config: RepairConfig | None = None,
    progress: bool = False,
) -> tuple[Any, dict]:
    """LoRA-fine-tune ``model`` (HF ``PreTrainedModel``) on SFT records; returns ``(peft_model, log)``.

    ``records``: dicts as written by :func:`cliff_lens.selection.export_sft` (``messages`` or
    alpaca). ``template``: the model's reasoning template (default: the record's ``template``
    field, else ``"generic"``). ``log`` holds the config, per-step losses, the mean loss of the
    first and last epoch, and the wall time. Merge with ``peft_model.merge_and_unload()`` for a
    plain model. peft injects the adapters into ``model`` in place: pass ``copy.deepcopy(model)``
    to keep an untouched base (as :func:`cliff_lens.efficiency.data_efficiency` does).
    """
    cfg = config or RepairConfig()
    recs = list(records)
    if not recs:
        raise ValueError("no SFT records to train on; the selection is empty")
    if cfg.epochs < 1 or cfg.batch_size < 1 or (cfg.steps is not None and cfg.steps < 1):
        raise ValueError(
            f"epochs, batch_size and steps must be >= 1, got {cfg.epochs}, {cfg.batch_size} and {cfg.steps}"
        )
    examples = [sft_example(r, tokenizer, template, cfg.max_len) for r in recs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    torch.manual_seed(cfg.seed)
    pm = _add_lora(
        model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.target_modules
    )
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    device = next(pm.parameters()).device
    losses: list[float] = []
    epoch_means: list[float] = []
    t0 = time.perf_counter()
    bar = None
    per_epoch = math.ceil(len(examples) / cfg.batch_size)
    n_steps = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc="repair (LoRA SFT)")
    pm.train()
    # with cfg.steps, selections of any size get the same amount of training (equal-compute
    # comparisons); the last pass over the data may stop part-way
    for _ in range(math.ceil(n_steps / per_epoch)):
        order = list(range(len(examples)))
        rng.shuffle(order)
        ep: list[float] = []
        for k in range(0, len(order), cfg.batch_size):
            if len(losses) == n_steps:
                break
            batch = _collate([examples[i] for i in order[k : k + cfg.batch_size]], pad_id)
            batch = {key: v.to(device) for key, v in batch.items()}
            out = pm(**batch)
            loss = out.loss
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss at step {len(losses)}; lower RepairConfig.lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            ep.append(losses[-1])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        epoch_means.append(sum(ep) / len(ep))
    if bar is not None:
        bar.close()
    pm.eval()
    log = {
        "config": asdict(cfg),
        "n_examples": len(examples),
        "n_steps": len(losses),
        "losses": losses,
        "epoch_mean_loss": epoch_means,
        "wall_s": time.perf_counter() - t0,
    }
    return pm, log


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _encode_prompt(tokenizer: Any, text: str, add_bos: bool) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if add_bos and not (tokenizer.bos_token and text.startswith(tokenizer.bos_token)):
        ids = [tokenizer.bos_token_id] + ids
    return ids


@torch.inference_mode()
def generate_answers(
    hf_model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    template: Any = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> list[dict]:
    """Greedy generation for each prompt (batched, left padding); ``[{"prompt", "thinking", "answer", "closed"}]``.

    The input is the template's generation prompt (BOS once); the completion is decoded up to
    the first EOS and split with ``template.split``.
    """
    from .templates import get_template

    tpl = get_template(template, tokenizer=tokenizer)
    add_bos = _adds_bos(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    eos_id = tokenizer.eos_token_id
    device = next(hf_model.parameters()).device
    out: list[dict] = []
    was_training = hf_model.training
    hf_model.eval()
    for k in range(0, len(prompts), batch_size):
        chunk = list(prompts[k : k + batch_size])
        enc = [_encode_prompt(tokenizer, tpl.generation_prompt(p, tokenizer), add_bos) for p in chunk]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for j, e in enumerate(enc):
            ids[j, width - len(e) :] = torch.tensor(e)
            mask[j, width - len(e) :] = 1
        gen = hf_model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        for j, p in enumerate(chunk):
            new = gen[j, width:].tolist()
            if eos_id is not None and eos_id in new:
                new = new[: new.index(eos_id)]
            text = tokenizer.decode(new, skip_special_tokens=False)
            if tokenizer.pad_token and pad_id != eos_id:
                text = text.replace(tokenizer.pad_token, "")
            thinking, answer, closed = tpl.split(text)
            out.append({"prompt": p, "thinking": thinking, "answer": answer.strip(), "closed": closed})
    if was_training:
        hf_model.train()
    return out


def evaluate_safety(
    hf_model: Any,
    tokenizer: Any,
    harmful_prompts: Sequence[str],
    harmless_prompts: Sequence[str],
    template: Any = None,
    judge: Any = None,
    max_new_tokens: int = 256,
    *,
    batch_size: int = 8,
    keep_samples: int = 3,
) -> dict:
    """ASR on harmful prompts and over-refusal on harmless prompts (greedy, answer-only judge).

    Returns ``{"asr", "over_refusal", "asr_ci95", "over_refusal_ci95", "n", "n_harmful",
    "n_harmless", "unclosed_harmful", "unclosed_harmless", "no_answer_harmful",
    "no_answer_harmless", "harmful_outcomes", "harmless_outcomes", "samples"}``; outcomes follow
    :func:`cliff_lens.judges.outcome` and the judge (default
    ``cliff_lens.judges.KeywordJudge()``) gets each answer with its prompt. Intervals are 95%
    Wilson (:func:`cliff_lens.stats.rate`), ``None`` without prompts.
    """
    from .judges import KeywordJudge, attack_success_rate, outcomes, refusal_rate

    if judge is None:
        judge = KeywordJudge()
    if not harmful_prompts and not harmless_prompts:
        raise ValueError("evaluate_safety got no prompts; pass harmful and/or harmless prompts")
    kw = dict(template=template, max_new_tokens=max_new_tokens, batch_size=batch_size)
    harm = generate_answers(hf_model, tokenizer, list(harmful_prompts), **kw) if harmful_prompts else []
    safe = generate_answers(hf_model, tokenizer, list(harmless_prompts), **kw) if harmless_prompts else []
    outs = outcomes(harm + safe, judge)
    h_out, s_out = outs[: len(harm)], outs[len(harm) :]
    asr, over = attack_success_rate(h_out), refusal_rate(s_out)
    return {
        "asr": asr.value if harm else math.nan,
        "over_refusal": over.value if safe else math.nan,
        "asr_ci95": asr.to_dict()["ci95"] if harm else None,
        "over_refusal_ci95": over.to_dict()["ci95"] if safe else None,
        "n": len(harm) + len(safe),
        "n_harmful": len(harm),
        "n_harmless": len(safe),
        "unclosed_harmful": sum(not g["closed"] for g in harm),
        "unclosed_harmless": sum(not g["closed"] for g in safe),
        "no_answer_harmful": h_out.count("no_answer"),
        "no_answer_harmless": s_out.count("no_answer"),
        "harmful_outcomes": h_out,
        "harmless_outcomes": s_out,
        "samples": {"harmful": harm[:keep_samples], "harmless": safe[:keep_samples]},
    }


def repair(
    model: Any,
    tokenizer: Any,
    records: Iterable[dict],
    harmful_prompts: Sequence[str],
    harmless_prompts: Sequence[str],
    *,
    template: Any = None,
    judge: Any = None,
    config: RepairConfig | None = None,
    max_new_tokens: int = 256,
    evaluate_before: bool = True,
    progress: bool = False,
) -> dict:
    """Evaluate, LoRA-train on ``records``, evaluate again: ``{"before", "after", "train"}``.

    The returned dict also holds the merged model under ``"model"`` (not JSON; pop it before saving).
    """
    ev = dict(template=template, judge=judge, max_new_tokens=max_new_tokens)
    before = (
        evaluate_safety(model, tokenizer, harmful_prompts, harmless_prompts, **ev)
        if evaluate_before
        else None
    )
    pm, log = train_lora(model, tokenizer, records, template=template, config=config, progress=progress)
    merged = pm.merge_and_unload()
    after = evaluate_safety(merged, tokenizer, harmful_prompts, harmless_prompts, **ev)
    return {"before": before, "after": after, "train": log, "model": merged}
