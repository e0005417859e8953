"""Benchmark: ablated generation, TL hooks + KV cache vs a weight-edited HF model vs plain HF.

Variants (greedy, the same prompts rendered with the model's reasoning template, a fixed
number of new tokens: EOS never stops a row):

* ``tl_hooks``   ``cliff_lens.rollout.generate_rollouts(model, ..., hooks=ablation_hooks(...))``:
                 mean ablation of ~3% of the heads through ``hook_z`` hooks, TL KV cache;
* ``tl_hooks_unfused`` ``tl_hooks`` with TransformerLens's own forward (``CLIFF_LENS_FAST_FORWARD=0``);
* ``tl_plain``   the same without hooks (separates hook cost from TransformerLens cost);
* ``hf_edited``  HF ``generate`` on ``cliff_lens.ablation.export_ablated_hf(...)`` (the ablation
                 written into ``o_proj``); target: >= 0.9x ``hf_plain``'s tokens/s;
* ``hf_plain``   HF ``generate`` on the unedited model.

Also checks that ``tl_hooks`` and ``hf_edited`` produce the same tokens (and ``tl_plain`` /
``hf_plain``), as the fraction of generated tokens that agree.

Reported ratios (new tokens/s, from the same interleaved rounds of one process, the order of the
variants rotating from round to round): ``tl_hooks_speed_vs_hf_plain`` (TL generation with the
mean-ablation hooks vs HF ``generate``; target >= 0.95x) and ``hf_edited_speed_vs_plain``
(target >= 0.9x), per batch size.

Usage::

    .venv/bin/python benchmarks/bench_generation.py --quick     # batch 1 and 8, 16 new tokens, 3 rounds
    .venv/bin/python benchmarks/bench_generation.py --new-tokens 64 --repeats 3

Writes ``benchmarks/results/bench_generation.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MODEL,
    fmt_table,
    interleaved,
    machine_info,
    measure_peak,
    save_result,
    slow_forward,
)

PROMPTS = [
    "How do I bake sourdough bread at home?",
    "Explain how vaccines train the immune system.",
    "Write a short poem about the sea.",
    "What is the difference between a list and a tuple in Python?",
    "How can I pick a lock without the key?",
    "Summarise the causes of the French Revolution.",
    "Give me three tips for a job interview.",
    "How does a bicycle stay upright?",
]


class _NoEos:
    """A tokenizer view whose ``eos_token_id`` is None, so generation runs the full budget."""

    eos_token_id = None

    def __init__(self, tok) -> None:
        self._tok = tok

    def __getattr__(self, k):
        return getattr(self._tok, k)

    def __call__(self, *a, **k):
        return self._tok(*a, **k)


def pick_heads(n_layers: int, n_heads: int, frac: float, seed: int = 0) -> list[tuple[int, int]]:
    """``round(frac * n_layers * n_heads)`` distinct heads, seeded."""
    k = max(1, round(frac * n_layers * n_heads))
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(n_layers * n_heads, generator=g)[:k].tolist()
    return sorted((i // n_heads, i % n_heads) for i in flat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 new tokens, 3 rounds")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frac", type=float, default=0.03, help="fraction of heads ablated")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default=MODEL, help="any load_model source (default: SmolLM2 from the zoo)")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (both TL and HF)")
    ap.add_argument("--no-unfused", action="store_true",
                    help="leave out tl_hooks_unfused (the slowest variant), e.g. to afford more rounds")  # fmt: skip
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.new_tokens, args.repeats = 16, 3
    dev = args.device

    from cliff_lens.ablation import ablation_hooks, compute_head_means, export_ablated_hf
    from cliff_lens.models import load_hf, load_model
    from cliff_lens.rollout import _encode, generate_rollouts
    from cliff_lens.templates import get_template

    t0 = time.perf_counter()
    tl = load_model(args.model, device=dev, dtype=args.dtype)
    tl.eval()
    hf, tok = load_hf(args.model, device=dev, dtype=args.dtype)
    hf.eval()
    load_s = time.perf_counter() - t0
    cfg = tl.cfg
    heads = pick_heads(cfg.n_layers, cfg.n_heads, args.frac)
    tmpl = get_template(getattr(tl, "cliff_template", None), tok)
    texts = [tmpl.generation_prompt(p, tok) for p in PROMPTS]
    enc = [_encode(tok, s) for s in texts]
    ref = [torch.tensor(e) for e in enc[:4]]
    means = compute_head_means(tl, ref)
    hooks = ablation_hooks(tl, heads, "mean", means)
    t1 = time.perf_counter()
    hf_ed = export_ablated_hf(hf, heads, "mean", means)
    hf_ed.eval()
    export_s = time.perf_counter() - t1
    print(f"{len(heads)} heads ablated ({args.frac:.0%} of {cfg.n_layers * cfg.n_heads}): {heads}; "
          f"export {export_s:.2f}s")  # fmt: skip

    real_tok = tl.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    N = args.new_tokens

    def tl_gen(prompts, with_hooks, unfused=False):
        tl.tokenizer = _NoEos(real_tok)
        try:
            if unfused:
                with slow_forward():
                    return generate_rollouts(tl, prompts, max_new_tokens=N, batch_size=len(prompts),
                                             hooks=hooks, progress=False)  # fmt: skip
            rs = generate_rollouts(tl, prompts, max_new_tokens=N, batch_size=len(prompts),
                                   hooks=hooks if with_hooks else None, progress=False)  # fmt: skip
        finally:
            tl.tokenizer = real_tok
        return rs

    def hf_gen(model, ids_list):
        L = max(len(x) for x in ids_list)
        ids = torch.full((len(ids_list), L), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(ids_list):
            ids[i, L - len(x) :] = torch.tensor(x)
            mask[i, L - len(x) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=N, min_new_tokens=N,
                do_sample=False, pad_token_id=pad, eos_token_id=None, temperature=None, top_p=None,
                top_k=None,
            )  # fmt: skip
        return [row[L:].tolist() for row in out.cpu()]

    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        prompts = PROMPTS[:b] if b <= len(PROMPTS) else (PROMPTS * (b // len(PROMPTS) + 1))[:b]
        ids_list = [_encode(tok, tmpl.generation_prompt(p, tok)) for p in prompts]
        fns = {
            "tl_hooks": lambda p=prompts: tl_gen(p, True),
            "tl_hooks_unfused": lambda p=prompts: tl_gen(p, True, unfused=True),
            "tl_plain": lambda p=prompts: tl_gen(p, False),
            "hf_edited": lambda i=ids_list: hf_gen(hf_ed, i),
            "hf_plain": lambda i=ids_list: hf_gen(hf, i),
        }
        if args.no_unfused:
            del fns["tl_hooks_unfused"]
        # agreement of the generated tokens (and a first-call memory reading)
        outs, mem = {}, {}
        for k, fn in fns.items():
            box = {}
            mem[k] = measure_peak(lambda fn=fn, box=box: box.setdefault("r", fn()), dev)
            outs[k] = box["r"]
        # Rollout keeps text, not ids: compare decoded text with all whitespace removed

        def agree(a_rs, b_ids):
            a_txt = [
                (r.thinking or "") + ((tmpl.think_close + (r.answer or "")) if r.thinking_closed else "")
                for r in a_rs
            ]
            b_txt = [real_tok.decode(x, skip_special_tokens=False) for x in b_ids]
            n_same = sum("".join(x.split()) == "".join(y.split()) for x, y in zip(a_txt, b_txt))
            return n_same / len(a_txt)

        n_new = {k: [r.meta.get("n_new_tokens") for r in outs[k]] for k in ("tl_hooks", "tl_plain")}
        res = interleaved(fns, args.repeats, device=dev, warmup=0)
        row = {"batch": b, "new_tokens": N, "prompt_tokens": [len(x) for x in ids_list]}
        for k, r in res.items():
            row[f"{k}_s"] = r["median_s"]
            row[f"{k}_new_tok_s"] = b * N / r["median_s"]
            row[f"{k}_times_s"] = r["times_s"]
            row[f"{k}_first_call_mem"] = mem[k]
        row["hf_edited_speed_vs_plain"] = res["hf_plain"]["median_s"] / res["hf_edited"]["median_s"]
        row["tl_hooks_speed_vs_hf_plain"] = res["hf_plain"]["median_s"] / res["tl_hooks"]["median_s"]
        row["tl_plain_speed_vs_hf_plain"] = res["hf_plain"]["median_s"] / res["tl_plain"]["median_s"]
        row["tl_hooks_speed_vs_tl_plain"] = res["tl_plain"]["median_s"] / res["tl_hooks"]["median_s"]
        row["same_text_tl_hooks_vs_hf_edited"] = agree(outs["tl_hooks"], outs["hf_edited"])
        row["same_text_tl_plain_vs_hf_plain"] = agree(outs["tl_plain"], outs["hf_plain"])
        if "tl_hooks_unfused" in res:
            row["same_text_tl_hooks_unfused_vs_hf_edited"] = agree(
                outs["tl_hooks_unfused"], outs["hf_edited"]
            )
            row["tl_hooks_speed_vs_tl_hooks_unfused"] = (
                res["tl_hooks_unfused"]["median_s"] / res["tl_hooks"]["median_s"]
            )
        row["tl_n_new_tokens"] = n_new
        rows.append(row)
        print(
            fmt_table([row], ["batch", "tl_hooks_s", "tl_plain_s", "hf_edited_s", "hf_plain_s"]), flush=True
        )

    cols = ["batch", "new_tokens", "hf_edited_speed_vs_plain", "tl_hooks_speed_vs_hf_plain",
            "tl_plain_speed_vs_hf_plain", "tl_hooks_speed_vs_tl_plain", "tl_hooks_speed_vs_tl_hooks_unfused",
            "same_text_tl_hooks_vs_hf_edited", "same_text_tl_plain_vs_hf_plain"]  # fmt: skip
    print()
    print("new tokens/s relative (targets: tl_hooks >= 0.95x hf_plain, hf_edited >= 0.9x hf_plain)")
    print(fmt_table(rows, cols))
    ratios = [r["hf_edited_speed_vs_plain"] for r in rows]
    tl_ratios = {r["batch"]: r["tl_hooks_speed_vs_hf_plain"] for r in rows}
    print("TL generation with ablation hooks vs HF generate: "
          + ", ".join(f"batch {b}: {v:.2f}x" for b, v in tl_ratios.items()))  # fmt: skip
    result = {
        "benchmark": "generation",
        "model": args.model,
        "dtype": args.dtype,
        "machine": machine_info(dev),
        "command": "python " + " ".join(sys.argv),
        "heads": [list(h) for h in heads],
        "mode": "mean",
        "repeats": args.repeats,
        "target": "hf_edited new tokens/s >= 0.9x hf_plain",
        "target_met": min(ratios) >= 0.9,
        "min_hf_edited_speed_vs_plain": min(ratios),
        "tl_hooks_target": "tl_hooks (mean-ablation hooks, KV cache) new tokens/s >= 0.95x hf_plain",
        "tl_hooks_speed_vs_hf_plain": tl_ratios,
        "tl_hooks_target_met": min(tl_ratios.values()) >= 0.95,
        "load_s": load_s,
        "export_s": export_s,
        "rows": rows,
        "notes": "first_call_mem: RSS delta of the first call in this process (allocator caching makes "
        "later calls smaller); timings exclude it (warm-up).",
    }
    print(f"wrote {save_result('bench_generation', result, args.out)}")


if __name__ == "__main__":
    main()
