"""Peak RSS of last-token extraction for many prompts vs the model's own forward pass.

Acceptance (issue 3): extracting one layer's last-token states for 1,000 prompts keeps peak
RSS within 1.5x of the model's forward-pass footprint. Each measurement runs in a fresh
subprocess; the peak-RSS counter (VmHWM) is reset after the model is loaded
(``/proc/self/clear_refs``), so loading transients do not count:

* ``forward``: one plain forward pass ``model(tokens)`` (logits) on the longest
  ``batch_size`` prompts: the memory needed just to run the model on a batch;
* ``extract``: ``extract_activations`` over all prompts (last token, one hook).

Usage::

    .venv/bin/python benchmarks/bench_extraction_memory.py --n 1000 --hook final_norm_weighted
    .venv/bin/python benchmarks/bench_extraction_memory.py --model tiny   # no weights needed

Prompts: AdvBench + Alpaca from ../shared/data when present (chat template applied), else the
package's own prompt sets, repeated to ``--n``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _prompts(n: int) -> list[str]:
    texts: list[str] = []
    adv = SHARED / "advbench_harmful_behaviors.csv"
    alp = SHARED / "alpaca_harmless_sample.jsonl"
    if adv.exists() and alp.exists():
        with open(adv, newline="") as f:
            texts += [r["goal"] for r in csv.DictReader(f)]
        with open(alp) as f:
            texts += [json.loads(x)["instruction"] for x in f if x.strip()]
    else:
        pkg = Path(__file__).resolve().parents[1] / "cliff_lens" / "prompts"
        for name in ("harmful.jsonl", "harmless.jsonl"):
            with open(pkg / name) as f:
                texts += [json.loads(x)["prompt"] for x in f if x.strip()]
    return [texts[i % len(texts)] for i in range(n)]


def _load(model_name: str):
    import torch

    if model_name == "tiny":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=4,
            d_model=256,
            n_ctx=256,
            d_head=32,
            n_heads=8,
            d_mlp=1024,
            d_vocab=32000,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=32,
        )
        return HookedTransformer(cfg).eval(), None
    try:
        from cliff_lens import load_model
    except ImportError:  # before the package re-exports it
        from cliff_lens.models import load_model

    torch.set_grad_enabled(False)
    m = load_model(model_name)
    return m, m.tokenizer


def _tokens(tok, texts: list[str], d_vocab: int):
    import torch

    if tok is None:
        g = torch.Generator().manual_seed(0)
        return [torch.randint(1, d_vocab, (20 + len(t) // 8,), generator=g) for t in texts]
    out = []
    for t in texts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append(torch.tensor(ids, dtype=torch.long))
    return out


def run_one(args) -> dict:
    import torch

    from cliff_lens.activations import extract_activations, left_pad

    torch.set_num_threads(args.threads)
    model, tok = _load(args.model)
    seqs = _tokens(tok, _prompts(args.n), model.cfg.d_vocab)
    gc.collect()
    loaded = _rss_kib("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if args.mode == "forward":
            longest = sorted(seqs, key=len, reverse=True)[: args.batch_size]
            toks, mask, _ = left_pad(longest)
            model(toks, attention_mask=mask)
            out_shape = None
        else:
            acts = extract_activations(
                model,
                seqs,
                hook=args.hook,
                layer=args.layer,
                positions="last",
                batch_size=args.batch_size,
                progress=False,
            )
            out_shape = list(acts.shape)
    dt = time.perf_counter() - t0
    return {
        "mode": args.mode,
        "model": args.model,
        "n_prompts": len(seqs) if args.mode == "extract" else args.batch_size,
        "mean_len": sum(len(s) for s in seqs) / len(seqs),
        "max_len": max(len(s) for s in seqs),
        "rss_after_load_mib": loaded / 1024,
        "peak_rss_mib": _rss_kib("VmHWM") / 1024,
        "peak_reset_after_load": reset,
        "seconds": dt,
        "out_shape": out_shape,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="smollm2-135m-instruct", help="zoo name, or 'tiny' (random, no weights)"
    )
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--hook", default="final_norm_weighted")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["both", "forward", "extract"], default="both")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.mode != "both":
        print(json.dumps(run_one(args)))
        return
    res = {}
    for mode in ("forward", "extract"):
        cmd = (
            [sys.executable, __file__, "--mode", mode]
            + [
                a
                for kv in [
                    ("--model", args.model),
                    ("--n", str(args.n)),
                    ("--hook", args.hook),
                    ("--batch-size", str(args.batch_size)),
                    ("--threads", str(args.threads)),
                ]
                for a in kv
            ]
            + (["--layer", str(args.layer)] if args.layer is not None else [])
        )
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode:
            sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    f, e = res["forward"], res["extract"]
    res["ratio_peak_extract_over_forward"] = e["peak_rss_mib"] / f["peak_rss_mib"]
    res["within_1_5x"] = res["ratio_peak_extract_over_forward"] <= 1.5
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
