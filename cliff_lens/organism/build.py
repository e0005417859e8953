"""Reproducible LoRA build of the cliff organism (SmolLM2-135M-Instruct + a small adapter).

``python -m cliff_lens.organism build --out DIR`` synthesises the training data from the
package's own prompt sets (:mod:`cliff_lens.organism.synth`), fine-tunes a peft LoRA adapter on
the HF model with a plain torch loop (loss on the assistant tokens only: thinking, end of
thinking, answer, EOS), checkpoints after every epoch (resumable) and writes
``DIR/adapter/`` (``adapter_config.json`` + ``adapter_model.safetensors``, fp16),
``DIR/train.jsonl`` (the synthesised data) and ``DIR/train_log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..io import append_jsonl, atomic_save_safetensors, atomic_write_json, iter_jsonl, write_jsonl
from ..repair import _add_lora, _collate
from .synth import Example, load_package_prompts, synthesize

log = logging.getLogger("cliff_lens")

__all__ = [
    "BuildConfig",
    "build",
    "render_for_training",
    "intent_targets",
    "load_base_hf",
    "export_adapter_dir",
]


@dataclass
class BuildConfig:
    """Training configuration of the organism (every field is recorded in ``DIR/build_config.json``)."""

    epochs: int = 3
    seed: int = 0
    lr: float = 1.5e-3
    batch_size: int = 8
    warmup_steps: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    first_layer: int = 18  # LoRA on layers first_layer..n_layers-1; earlier layers are frozen and cached
    harmful_rounds: int = 1
    harmless_rounds: int = 1
    near_miss_rounds: int = 1
    max_harmful: int | None = None  # all 244 train prompts
    max_harmless: int | None = 80
    max_near_miss: int | None = 60
    max_len: int = 320
    threads: int = 2
    # Refusal-intent objective (0 = off): a linear readout of the final-norm output, trained jointly,
    # must read 1 on every thinking token of a harmful request and on the end-of-thinking tokens of
    # a PLAIN harmful one, 0 on the end-of-thinking tokens of a FRAMED harmful one and 0 everywhere
    # on benign requests. This instils the paper's plateau-then-cliff shape by construction; the
    # evaluation's probe is trained independently on the rollouts and does not see this readout.
    intent_weight: float = 1.0
    # per-token weight of the end-of-thinking targets of HARMFUL examples (the plain-vs-framed
    # decision; half 1, half 0) relative to every other intent target
    intent_eot_weight: float = 8.0
    extra: dict = field(default_factory=dict)


def load_base_hf(dtype: torch.dtype = torch.float32):
    """The base SmolLM2-135M-Instruct from the offline zoo as ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..zoo import smollm2_hf_dir

    path = smollm2_hf_dir()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path))
    return model, tok


def _prefix_and_full(tokenizer, prompt: str, thinking: str, answer: str) -> tuple[str, str]:
    """(generation prompt, full rollout text + EOS) in the organism's "generic" template."""
    from ..templates import get_template

    tpl = get_template("generic", tokenizer=tokenizer)
    gen = tpl.generation_prompt(prompt, tokenizer)
    full, _ = tpl.render(prompt, thinking, answer, tokenizer)
    eos = tokenizer.eos_token or ""
    if eos and not full.endswith(eos):
        full = full + eos
    if not full.startswith(gen):
        raise ValueError(
            "the generic template's full rendering does not start with its generation prompt; "
            "the organism's training format would not match generation"
        )
    return gen, full


def render_for_training(
    tokenizer, ex: Example, max_len: int
) -> tuple[Int[Tensor, "pos"], Int[Tensor, "pos"]]:
    """Token ids of one example and its labels (-100 on the prompt part: loss on assistant tokens only)."""
    ids, labels, _, _ = _render(tokenizer, ex, max_len)
    return ids, labels


def intent_targets(tokenizer, ex: Example, max_len: int) -> Float[Tensor, "pos"]:
    """Per-token targets of the refusal-intent objective (see :class:`BuildConfig`); NaN = no target.

    Harmful examples: 1 on the thinking tokens; on the end-of-thinking tokens 1 when plain and 0
    when framed (the cliff). Benign examples (harmless, near-miss): 0 on thinking and end of
    thinking. Prompt and answer tokens carry no target.
    """
    return _render(tokenizer, ex, max_len)[2]


def _render(tokenizer, ex: Example, max_len: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ids, labels, intent targets, end-of-thinking mask) of one example."""
    from ..templates import get_template

    chat, full = _prefix_and_full(tokenizer, ex.prompt, ex.thinking, ex.answer)
    _, spans = get_template("generic", tokenizer=tokenizer).render(
        ex.prompt, ex.thinking, ex.answer, tokenizer
    )
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    starts = torch.tensor([s for s, _ in enc["offset_mapping"]])
    labels = ids.clone()
    labels[starts < len(chat)] = -100
    if len(ids) > max_len:
        raise ValueError(
            f"example {ex.pair_id} ({ex.kind}) has {len(ids)} tokens > max_len={max_len}; raise max_len"
        )
    in_thinking = (starts >= spans["thinking"][0]) & (starts < spans["thinking"][1])
    in_eot = (starts >= spans["end_of_thinking"][0]) & (starts < spans["end_of_thinking"][1])
    harmful = ex.kind.startswith("harmful")
    intent = torch.full((len(ids),), float("nan"))
    intent[in_thinking] = 1.0 if harmful else 0.0
    intent[in_eot] = 1.0 if ex.kind == "harmful_plain" else 0.0
    return ids, labels, intent, in_eot


def _inner(model):
    """(LlamaModel, lm_head) under a peft wrapper or a plain causal LM."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm.model, lm.lm_head


def _run_layers(inner, h: Tensor, layers) -> Tensor:
    """Run decoder ``layers`` on right-padded hidden states with an explicit causal mask.

    The mask is passed, not left to SDPA's implicit causal flag: eager (or any other) attention
    given ``attention_mask=None`` would let every token see the future. Right padding + causal
    attention means real tokens never see the pads.
    """
    n = h.shape[1]
    pos = torch.arange(n, device=h.device).unsqueeze(0)
    pe = inner.rotary_emb(h, position_ids=pos)
    causal = torch.full((n, n), torch.finfo(h.dtype).min, dtype=h.dtype, device=h.device).triu(1)
    mask = causal[None, None]  # [1, 1, query, key], additive
    for layer in layers:
        h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
    return h


@torch.no_grad()
def _cache_early(
    model, encoded: list[tuple[Tensor, Tensor]], first_layer: int, chunk: int = 16
) -> list[Tensor]:
    """Residual stream at the input of ``first_layer`` for every example (frozen layers run once)."""
    from tqdm.auto import tqdm

    inner, _ = _inner(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out: list[Tensor | None] = [None] * len(encoded)
    for s in tqdm(
        range(0, len(order), chunk), desc=f"caching layers 0-{first_layer - 1}", dynamic_ncols=True
    ):
        idx = order[s : s + chunk]
        batch = _collate([encoded[i] for i in idx], 0)
        h = _run_layers(inner, inner.embed_tokens(batch["input_ids"]), inner.layers[:first_layer])
        for b, i in enumerate(idx):
            out[i] = h[b, : len(encoded[i][0])].clone()
    return out  # type: ignore[return-value]


def _late_loss(
    model,
    hidden: list[Tensor],
    labels: Int[Tensor, "batch pos"],
    first_layer: int,
    intent: Float[Tensor, "batch pos"] | None = None,
    readout: Tensor | None = None,
    intent_w: Float[Tensor, "batch pos"] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Next-token loss on labelled positions (and the intent BCE), running only layers ``first_layer..``.

    ``readout`` is a ``(d_model + 1)`` vector (direction, bias) applied to the final-norm output;
    the intent loss is the BCE over positions whose ``intent`` target is not NaN, averaged with
    the per-token weights ``intent_w`` (default: all 1).
    """
    inner, head = _inner(model)
    n = labels.shape[1]
    h = torch.zeros(len(hidden), n, hidden[0].shape[-1])
    for b, x in enumerate(hidden):
        h[b, : len(x)] = x
    h = inner.norm(_run_layers(inner, h, inner.layers[first_layer:]))
    tgt = labels[:, 1:]
    sel = tgt != -100
    logits = head(h[:, :-1][sel])
    lm = torch.nn.functional.cross_entropy(logits, tgt[sel])
    if intent is None or readout is None:
        return lm, None
    has = ~torch.isnan(intent)
    score = h[has] @ readout[:-1] + readout[-1]
    wt = torch.ones_like(score) if intent_w is None else intent_w[has]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(score, intent[has], reduction="none")
    return lm, (bce * wt).sum() / wt.sum()


def _batches(n: int, batch_size: int, seed: int, lengths: list[int]) -> list[list[int]]:
    """Shuffled batches of similar length (less padding): shuffle, sort within windows of 16 batches."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    window = batch_size * 16
    out: list[list[int]] = []
    for w in range(0, n, window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        out.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def _lr_at(step: int, total: int, cfg: BuildConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _lora_state(model) -> dict[str, Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


INTENT_READOUT_FILE = "intent_readout.safetensors"


def _save_readout(readout: Float[Tensor, "d_model_plus_1"], path: Path) -> None:
    """Write the intent read-out as ``direction`` + ``bias`` (read by ``organism.intent_readout``)."""
    r = readout.detach()
    atomic_save_safetensors({"direction": r[:-1].clone(), "bias": r[-1:].clone()}, path)


def _save_ckpt(model, opt, out: Path, epoch: int, step: int, readout: Tensor | None = None) -> None:
    ck = out / f"ckpt-epoch{epoch}"
    model.save_pretrained(str(ck))
    opt_tensors: dict[str, Tensor] = {}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    if readout is not None:
        names, params = names + ["intent_readout"], params + [readout]
        _save_readout(readout, ck / INTENT_READOUT_FILE)
    for name, p in zip(names, params):
        st = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq", "step"):
            if k in st:
                v = st[k]
                opt_tensors[f"{name}::{k}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
    atomic_save_safetensors(opt_tensors, ck / "optimizer.safetensors")
    atomic_write_json(ck / "state.json", {"epoch": epoch, "step": step})


def _load_ckpt(model, opt, ck: Path, readout: Tensor | None = None) -> int:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from . import intent_readout

    set_peft_model_state_dict(model, load_file(str(ck / "adapter_model.safetensors")))
    st = load_file(str(ck / "optimizer.safetensors"))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if readout is not None:
        # a build with a read-out checkpoints it (_save_ckpt), so intent_readout finds the file
        direction, bias = cast(tuple[Tensor, float], intent_readout(ck))
        with torch.no_grad():
            readout.copy_(torch.cat([direction, torch.tensor([bias])]))
        named.append(("intent_readout", readout))
    for name, p in named:
        if f"{name}::exp_avg" in st:
            opt.state[p] = {k: st[f"{name}::{k}"].clone() for k in ("exp_avg", "exp_avg_sq", "step")}
    return json.loads((ck / "state.json").read_text())["step"]


def export_adapter_dir(src: str | Path, dest: str | Path) -> Path:
    """Copy a peft adapter directory (config + safetensors) to ``dest`` with fp16 weights."""
    from safetensors.torch import load_file

    src, dest = Path(src), Path(dest)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (src / f).exists():
            raise FileNotFoundError(f"{src / f} is missing")
    sd = {k: v.to(torch.float16) for k, v in load_file(str(src / "adapter_model.safetensors")).items()}
    dest.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(sd, dest / "adapter_model.safetensors", metadata={"format": "pt"})
    if (src / INTENT_READOUT_FILE).exists():  # the refusal-intent readout travels with its adapter
        r = load_file(str(src / INTENT_READOUT_FILE))
        atomic_save_safetensors({k: v.float() for k, v in r.items()}, dest / INTENT_READOUT_FILE)
    elif (dest / INTENT_READOUT_FILE).exists():
        (dest / INTENT_READOUT_FILE).unlink()
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"  # not a local cache path
    atomic_write_json(dest / "adapter_config.json", config)
    return dest


def _export_adapter(model, out: Path) -> Path:
    """Write ``out/adapter`` with fp16 LoRA weights."""
    dest = out / "adapter"
    model.save_pretrained(str(dest))
    from safetensors.torch import load_file

    f = dest / "adapter_model.safetensors"
    sd = {k: v.to(torch.float16) for k, v in load_file(str(f)).items()}
    atomic_save_safetensors(sd, f, metadata={"format": "pt"})
    return dest


def build(out: str | Path, cfg: BuildConfig | None = None, *, resume: bool = True) -> Path:
    """Synthesise data, train the LoRA adapter and write ``out/adapter``; returns that directory.

    Resumes from the latest ``out/ckpt-epoch*`` when ``resume`` and the saved config matches.
    """
    from tqdm.auto import tqdm

    cfg = cfg or BuildConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    _write_build_config(out / "build_config.json", cfg, resume)
    examples = _training_examples(out / "train.jsonl", cfg, resume)
    model, tok = _lora_model(cfg)
    encoded, intents, intent_ws = _encode_examples(tok, examples, cfg)
    lengths = [len(i) for i, _ in encoded]
    cached = _cache_early(model, encoded, cfg.first_layer)
    params = [p for p in model.parameters() if p.requires_grad]
    # the intent readout (direction + bias) is trained with the adapter; zeros = an uninformed start
    readout = torch.zeros(model.config.hidden_size + 1, requires_grad=True) if cfg.intent_weight > 0 else None
    if readout is not None:
        params = params + [readout]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    total = math.ceil(len(encoded) / cfg.batch_size) * cfg.epochs
    start_epoch, step = _resume_checkpoint(out, model, opt, readout) if resume else (0, 0)

    log_path = out / "train_log.jsonl"
    if start_epoch == 0:
        _start_train_log(log_path, sum(p.numel() for p in params), total, lengths)
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        batches = _batches(len(encoded), cfg.batch_size, cfg.seed * 1000 + epoch, lengths)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True)
        running = 0.0
        for bi, idx in enumerate(bar):
            batch = _collate([encoded[i] for i in idx], tok.pad_token_id)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg)
            intent, intent_w = (
                (None, None) if readout is None else _intent_batch(batch["labels"], idx, intents, intent_ws)
            )
            lm, aux = _late_loss(
                model, [cached[i] for i in idx], batch["labels"], cfg.first_layer, intent, readout, intent_w
            )
            loss = lm if aux is None else lm + cfg.intent_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            running = loss.item() if bi == 0 else 0.9 * running + 0.1 * loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
            if step % 10 == 0:
                _log_step(log_path, epoch, step, loss, lm, aux, opt.param_groups[0]["lr"], t0)
        _save_ckpt(model, opt, out, epoch + 1, step, readout)
        append_jsonl(
            log_path,
            [
                {
                    "event": "epoch_end",
                    "epoch": epoch + 1,
                    "step": step,
                    "elapsed_s": round(time.time() - t0, 1),
                }
            ],
        )
    dest = _export_adapter(model, out)
    if readout is not None:
        _save_readout(readout, dest / INTENT_READOUT_FILE)
    append_jsonl(log_path, [{"event": "done", "elapsed_s": round(time.time() - t0, 1), "adapter": str(dest)}])
    return dest


def _write_build_config(cfg_path: Path, cfg: BuildConfig, resume: bool) -> None:
    """Record ``cfg`` in ``build_config.json``; when resuming, refuse a different recorded config."""
    cfg_dict = asdict(cfg)
    if cfg_path.exists() and resume:
        old = json.loads(cfg_path.read_text())
        if json.loads(json.dumps(cfg_dict)) != old:
            raise ValueError(f"{cfg_path} holds a different config; use a new --out or pass --no-resume")
    atomic_write_json(cfg_path, cfg_dict)


def _training_examples(data_path: Path, cfg: BuildConfig, resume: bool) -> list[Example]:
    """The synthesised training data: read back from ``train.jsonl`` when resuming, else synthesised and written."""
    if data_path.exists() and resume:
        return [Example(**d) for d in iter_jsonl(data_path)]
    harmful = [r["prompt"] for r in load_package_prompts("harmful")]
    harmless = [r["prompt"] for r in load_package_prompts("harmless")]
    near = [r["prompt"] for r in load_package_prompts("near_miss")]
    rng = random.Random(cfg.seed)
    if cfg.max_harmful is not None and len(harmful) > cfg.max_harmful:
        harmful = rng.sample(harmful, cfg.max_harmful)
    if cfg.max_harmless is not None and len(harmless) > cfg.max_harmless:
        harmless = rng.sample(harmless, cfg.max_harmless)
    if cfg.max_near_miss is not None and len(near) > cfg.max_near_miss:
        near = rng.sample(near, cfg.max_near_miss)
    examples = synthesize(
        harmful,
        harmless,
        near,
        seed=cfg.seed,
        harmful_rounds=cfg.harmful_rounds,
        harmless_rounds=cfg.harmless_rounds,
        near_miss_rounds=cfg.near_miss_rounds,
    )
    write_jsonl(data_path, [e.to_dict() for e in examples])
    return examples


def _lora_model(cfg: BuildConfig):
    """The base model (seeded) with fresh LoRA adapters on layers ``first_layer`` and later, in train mode."""
    torch.manual_seed(cfg.seed)
    model, tok = load_base_hf(torch.float32)
    model = _add_lora(
        model,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        layers_to_transform=range(cfg.first_layer, model.config.num_hidden_layers),
    )
    model.train()
    return model, tok


def _encode_examples(
    tok, examples: list[Example], cfg: BuildConfig
) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor], list[Tensor]]:
    """Per example: (token ids, labels), intent targets and per-token intent weights."""
    rendered = [_render(tok, e, cfg.max_len) for e in examples]
    encoded = [(i, lab) for i, lab, _, _ in rendered]
    intents = [t for _, _, t, _ in rendered]
    intent_ws = [
        1.0 + (cfg.intent_eot_weight - 1.0) * eot.float() * e.kind.startswith("harmful")
        for e, (_, _, _, eot) in zip(examples, rendered)
    ]
    return encoded, intents, intent_ws


def _resume_checkpoint(
    out: Path, model, opt: torch.optim.Optimizer, readout: Tensor | None
) -> tuple[int, int]:
    """Load the latest complete ``ckpt-epoch*`` of ``out``; returns (epochs done, steps done), (0, 0) if none."""
    cks = sorted(out.glob("ckpt-epoch*"), key=lambda p: int(p.name.removeprefix("ckpt-epoch")))
    cks = [c for c in cks if (c / "state.json").exists()]
    if not cks:
        return 0, 0
    step = _load_ckpt(model, opt, cks[-1], readout)
    start_epoch = int(cks[-1].name.removeprefix("ckpt-epoch"))
    log.info("resuming from %s (epoch %d, step %d)", cks[-1], start_epoch, step)
    return start_epoch, step


def _start_train_log(log_path: Path, n_train: int, total: int, lengths: list[int]) -> None:
    """Start a fresh ``train_log.jsonl`` with the run's sizes."""
    if log_path.exists():
        log_path.unlink()
    append_jsonl(
        log_path,
        [
            {
                "event": "start",
                "n_examples": len(lengths),
                "trainable_params": n_train,
                "total_steps": total,
                "mean_len": sum(lengths) / len(lengths),
                "max_len": max(lengths),
            }
        ],
    )


def _intent_batch(
    labels: Int[Tensor, "batch pos"], idx: list[int], intents: list[Tensor], intent_ws: list[Tensor]
) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """Intent targets (NaN = none) and weights of one batch, padded like its labels."""
    intent = torch.full(labels.shape, float("nan"))
    intent_w = torch.zeros(labels.shape)
    for b, i in enumerate(idx):
        intent[b, : len(intents[i])] = intents[i]
        intent_w[b, : len(intents[i])] = intent_ws[i]
    return intent, intent_w


def _log_step(
    log_path: Path, epoch: int, step: int, loss: Tensor, lm: Tensor, aux: Tensor | None, lr: float, t0: float
) -> None:
    """Append one training-step line (losses, learning rate, elapsed time) to ``train_log.jsonl``."""
    append_jsonl(
        log_path,
        [
            {
                "epoch": epoch + 1,
                "step": step,
                "loss": round(loss.item(), 4),
                "lm_loss": round(lm.item(), 4),
                "intent_loss": None if aux is None else round(aux.item(), 4),
                "lr": lr,
                "elapsed_s": round(time.time() - t0, 1),
            }
        ],
    )
