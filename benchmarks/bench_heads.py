"""Benchmark: head_attributions for all heads vs a plain forward pass of the same batch.

Target (issue 4): attribution costs at most 1.3x a plain forward. Usage::

    .venv/bin/python benchmarks/bench_heads.py [--model smollm2-135m-instruct] [--batch 8] [--seq 128]

Uses SmolLM2-135M-Instruct through ``cliff_lens.load_model`` when it loads (offline zoo), else a
tiny random model (say which in the output). Writes ``benchmarks/results/bench_heads.json``.
Times are medians over ``--repeats`` interleaved rounds after one warm-up (``_common.interleaved``); all see the same left-padded
batch with an attention mask.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from cliff_lens.heads import head_attributions
from cliff_lens.io import atomic_write_json
from cliff_lens.readout import left_pad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved  # noqa: E402


def _load(name: str, device: str = "cpu", dtype: str = "float32"):
    try:
        from cliff_lens import load_model

        return load_model(name, device=device, dtype=dtype), name
    except Exception as e:  # noqa: BLE001 - fall back to a tiny model and say so
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        print(f"could not load {name!r} ({type(e).__name__}: {e}); using a tiny random model")
        cfg = HookedTransformerConfig(
            n_layers=6, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=5000, n_ctx=512,
            act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
        )  # fmt: skip
        return HookedTransformer(cfg).to(device), "tiny-random-6x8"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_heads.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, name = _load(args.model, args.device, args.dtype)
    model.eval()
    g = torch.Generator().manual_seed(0)
    lengths = [args.seq - (i * args.seq) // (4 * args.batch) for i in range(args.batch)]  # mixed lengths
    seqs = [torch.randint(0, min(model.cfg.d_vocab, 40000), (n,), generator=g) for n in lengths]
    toks, mask, _ = left_pad(seqs, 0)
    toks, mask = toks.to(args.device), mask.to(args.device)
    d = torch.randn(model.cfg.d_model, generator=g)

    def plain():
        with torch.no_grad():
            model(toks, attention_mask=mask)

    def plain_fused():
        from cliff_lens.fast_forward import fast_forward

        with torch.no_grad(), fast_forward(model):
            model(toks, attention_mask=mask)

    def plain_resid():
        with torch.no_grad():
            model(toks, attention_mask=mask, stop_at_layer=model.cfg.n_layers)

    res = {
        "model": name,
        "n_layers": model.cfg.n_layers,
        "n_heads": model.cfg.n_heads,
        "batch": args.batch,
        "lengths": lengths,
        "torch_threads": torch.get_num_threads(),
        "device": str(model.cfg.device),
        "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "platform": platform.platform(),
        "repeats": args.repeats,
    }
    timed = interleaved(
        {
            "plain_forward_s": plain,
            "plain_forward_fused_s": plain_fused,
            "forward_to_last_resid_s": plain_resid,
            "attribution_last_s": lambda: head_attributions(
                model, seqs, d, positions="last", batch_size=args.batch
            ),
            "attribution_all_s": lambda: head_attributions(
                model, seqs, d, positions="all", batch_size=args.batch
            ),
        },
        args.repeats,
        device=args.device,
    )
    t = {k: r["median_s"] for k, r in timed.items()}
    res.update(t)
    for pos in ("last", "all"):
        res[f"ratio_{pos}_vs_plain_forward"] = t[f"attribution_{pos}_s"] / t["plain_forward_s"]
        res[f"ratio_{pos}_vs_plain_forward_fused"] = t[f"attribution_{pos}_s"] / t["plain_forward_fused_s"]
        res[f"ratio_{pos}_vs_forward_to_last_resid"] = (
            t[f"attribution_{pos}_s"] / t["forward_to_last_resid_s"]
        )
    for k, v in res.items():
        print(f"{k}: {v}")
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
