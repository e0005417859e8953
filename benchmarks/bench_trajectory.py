"""Benchmark: refusal-score trajectories (every position, one read-out + probe) vs HF and naive TL.

Variants, all on the same ``[batch, seq]`` tokens (SmolLM2-135M-Instruct, real weights):

* ``cliff``        ``cliff_lens.trajectory.compute_trajectories`` with the paper's probe
                   (``final_norm_weighted``: the last layer through ``ln_final``; no unembedding);
* ``cliff_mid``    the same with a probe on ``blocks.{L}.hook_resid_post`` at the middle layer
                   (``stop_at_layer`` skips the upper half);
* ``hf_forward``   a plain HF forward of the same tokens (logits included): the speed target,
                   ``cliff`` >= 0.9x its tokens/s;
* ``tl_cache``     TransformerLens ``run_with_cache()`` without a names filter, probe applied to
                   the cached ``ln_final.hook_normalized`` (the naive way);
* ``hf_hidden``    HF ``output_hidden_states=True`` (all layers), probe on the last entry
                   (the official RefusalCliff code's way);
* ``cliff_unfused`` ``cliff`` with TransformerLens's own forward (``CLIFF_LENS_FAST_FORWARD=0``):
                   what ``cliff`` cost before ``cliff_lens.fast_forward`` was merged;
* ``hf_eager``     diagnostic: the plain HF forward with ``attn_implementation="eager"`` (the
                   explicit softmax(QK^T)V that TransformerLens also computes), to show how much
                   of the gap to ``hf_forward`` is the fused SDPA attention kernel.

Times are medians of interleaved rounds (A B C D E A B C D E ...), so load on a shared machine
hits every variant alike; ratios are computed from the same rounds. Peak memory is measured per
variant in a fresh subprocess (RSS sampled every 5 ms; CUDA allocator peak on GPU).

Usage::

    .venv/bin/python benchmarks/bench_trajectory.py --quick           # 512 tokens x batch 1, 3 rounds
    .venv/bin/python benchmarks/bench_trajectory.py                    # grid, capped by --max-tokens
    .venv/bin/python benchmarks/bench_trajectory.py --device cuda --max-tokens 0   # full grid on a GPU

Writes ``benchmarks/results/bench_trajectory.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
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
    measure_in_subprocess,
    measure_peak,
    save_result,
    slow_forward,
)

VARIANTS = ("cliff", "cliff_mid", "hf_forward", "tl_cache", "hf_hidden", "hf_eager", "cliff_unfused")
TL_VARIANTS = {"cliff", "cliff_mid", "tl_cache", "cliff_unfused"}


def naive_cache_gib(n_layers: int, n_heads: int, d_model: int, d_mlp: int, b: int, t: int) -> float:
    """Rough size of an unfiltered ``run_with_cache`` (fp32): attention scores + pattern
    ``[b, H, t, t]`` per layer plus ~20 residual-width and 3 MLP-width activations per layer."""
    per_layer = 2 * n_heads * t * t + 20 * t * d_model + 3 * t * d_mlp
    return 4 * b * n_layers * per_layer / 2**30


def make_probes(model):
    """A paper-style probe (final_norm_weighted) and a mid-layer residual probe, random unit directions."""
    from cliff_lens.probe import RefusalProbe

    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    mid = model.cfg.n_layers // 2
    meta = {"model_name": model.cfg.model_name}
    final = RefusalProbe(torch.randn(d, generator=g), 0.1, 3.0, "final_norm_weighted", None, dict(meta))
    midp = RefusalProbe(torch.randn(d, generator=g), 0.1, 3.0, "blocks.{L}.hook_resid_post", mid, dict(meta))
    return final, midp


def build_fns(variants, tl, hf, toks: torch.Tensor, probes) -> dict:
    """Zero-argument callables, one per variant, all reading ``toks`` ``[b, t]``."""
    from cliff_lens.trajectory import compute_trajectories

    final, midp = probes
    seqs = list(toks.cpu())
    b = toks.shape[0]
    fns = {}
    dev_toks = toks
    if "cliff" in variants:
        fns["cliff"] = lambda: compute_trajectories(tl, seqs, final, batch_size=b, progress=False)
    if "cliff_unfused" in variants:

        def cliff_unfused():
            with slow_forward():
                return compute_trajectories(tl, seqs, final, batch_size=b, progress=False)

        fns["cliff_unfused"] = cliff_unfused
    if "cliff_mid" in variants:
        fns["cliff_mid"] = lambda: compute_trajectories(tl, seqs, midp, batch_size=b, progress=False)
    if "hf_forward" in variants:

        def hf_forward():
            with torch.inference_mode():
                return hf(input_ids=dev_toks).logits

        fns["hf_forward"] = hf_forward
    if "tl_cache" in variants:
        w_tl = final.w.to(toks.device) * tl.ln_final.w.detach().float()

        def tl_cache():
            with torch.inference_mode():
                _, cache = tl.run_with_cache(dev_toks)
                x = cache["ln_final.hook_normalized"]
                return torch.sigmoid(x.float() @ w_tl + final.bias).cpu()

        fns["tl_cache"] = tl_cache
    if "hf_hidden" in variants:
        w_hf = final.w.to(toks.device)

        def hf_hidden():
            with torch.inference_mode():
                hs = hf(input_ids=dev_toks, output_hidden_states=True).hidden_states
                return torch.sigmoid(hs[-1].float() @ w_hf + final.bias).cpu()

        fns["hf_hidden"] = hf_hidden
    if "hf_eager" in variants:

        def hf_eager():
            # every attention module reads the shared config at call time: toggle it
            old = hf.config._attn_implementation
            hf.config._attn_implementation = "eager"
            try:
                with torch.inference_mode():
                    return hf(input_ids=dev_toks).logits
            finally:
                hf.config._attn_implementation = old

        fns["hf_eager"] = hf_eager
    return fns


def load(which: set[str], device: str, dtype: str = "float32", model: str = MODEL):
    """(TL model or None, HF model or None)."""
    from cliff_lens.models import load_hf, load_model

    tl = hf = None
    if which & TL_VARIANTS:
        tl = load_model(model, device=device, dtype=dtype)
        tl.eval()
    if which - TL_VARIANTS:
        hf, _ = load_hf(model, device=device, dtype=dtype)
        hf.eval()
    return tl, hf


def tokens(vocab: int, b: int, t: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * b + t)
    return torch.randint(100, min(vocab, 40000), (b, t), generator=g).to(device)


def variant_peaks(variant, tl, hf, probes, vocab: int, configs, device: str) -> dict:
    """Peak memory of one variant for each (seq, batch) config, smallest first."""
    out = {}
    for t, b in sorted(configs, key=lambda c: c[0] * c[1]):
        fn = build_fns({variant}, tl, hf, tokens(vocab, b, t, device), probes)[variant]
        out[f"{t}x{b}"] = measure_peak(fn, device)
    return out


def mem_child(variant: str, configs: list[tuple[int, int]], device: str, dtype: str, model: str) -> None:
    """Subprocess entry: peak memory of one variant over the given (seq, batch) configs (ascending)."""
    tl, hf = load({variant}, device, dtype, model)
    m = tl if tl is not None else hf
    vocab = tl.cfg.d_vocab if tl is not None else hf.config.vocab_size
    probes = make_probes(tl) if tl is not None else make_probes_hf(hf)
    warm = build_fns({variant}, tl, hf, tokens(vocab, 1, 16, device), probes)[variant]
    warm()
    out = variant_peaks(variant, tl, hf, probes, vocab, configs, device)
    del m
    print("MEM_JSON " + json.dumps(out))


def make_probes_hf(hf):
    """Probes for an HF-only process (same seeds as :func:`make_probes`)."""

    class _Cfg:
        d_model = hf.config.hidden_size
        n_layers = hf.config.num_hidden_layers
        model_name = "SmolLM2-135M-Instruct"

    class _M:
        cfg = _Cfg

    return make_probes(_M)


def bf16_check(
    tl_fp32, hf, probes, device: str, seq: int, batch: int, repeats: int, model: str = MODEL
) -> dict:
    """bf16 vs fp32 trajectory scores (max |diff| of probabilities) and speed, side by side."""
    from cliff_lens.models import load_model
    from cliff_lens.trajectory import compute_trajectories

    tl16 = load_model(model, device=device, dtype="bfloat16")
    tl16.eval()
    final = probes[0]
    toks = tokens(tl_fp32.cfg.d_vocab, batch, seq, device)
    seqs = list(toks.cpu())

    def run(m):
        return torch.stack(
            [t.scores for t in compute_trajectories(m, seqs, final, batch_size=batch, progress=False)]
        )

    a, b = run(tl_fp32), run(tl16)
    logit = lambda p: torch.logit(p.double().clamp(1e-12, 1 - 1e-12))  # noqa: E731
    res = interleaved(
        {
            "cliff_fp32": lambda: run(tl_fp32),
            "cliff_bf16": lambda: run(tl16),
            "hf_forward_fp32": lambda: _hf_inf(hf, toks),
        },
        repeats,
        device=device,
    )
    out = {
        "seq": seq,
        "batch": batch,
        "max_abs_diff_prob": float((a - b).abs().max()),
        "mean_abs_diff_prob": float((a - b).abs().mean()),
        "max_abs_diff_logit": float((logit(a) - logit(b)).abs().max()),
        "frac_same_side_of_0.5": float(((a > 0.5) == (b > 0.5)).float().mean()),
    }
    for k, r in res.items():
        out[f"{k}_s"] = r["median_s"]
        out[f"{k}_times_s"] = r["times_s"]
    out["bf16_speed_vs_fp32"] = res["cliff_fp32"]["median_s"] / res["cliff_bf16"]["median_s"]
    out["bf16_speed_vs_hf_fp32"] = res["hf_forward_fp32"]["median_s"] / res["cliff_bf16"]["median_s"]
    del tl16
    return out


def _hf_inf(hf, toks):
    with torch.inference_mode():
        return hf(input_ids=toks).logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one config (512 tokens x batch 1), 3 rounds")
    ap.add_argument("--seqs", default="512,1024,2048,4096")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=None, help="skip configs with batch*seq above this "
                    "(default 4096 on CPU, no cap on CUDA; 0 = no cap)")  # fmt: skip
    ap.add_argument("--naive-max-gib", type=float, default=None,
                    help="skip tl_cache when its cache would exceed this (default 3 CPU, 60 CUDA)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=MODEL, help="any load_model source (default: SmolLM2 from the zoo); "
                    "benchmarks/make_random_model.py writes real architectures with random weights")  # fmt: skip
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (both TL and HF)")
    ap.add_argument(
        "--bf16", action="store_true", help="also compare bf16 vs fp32 trajectories (first config)"
    )
    ap.add_argument("--bf16-only", action="store_true", help="only the bf16 comparison (no grid)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--_mem", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_configs", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if args._mem:
        cfgs = [tuple(int(x) for x in c.split("x")) for c in args._configs.split(",")]
        mem_child(args._mem, cfgs, args.device, args.dtype, args.model)  # type: ignore[arg-type]
        return

    if args.quick:
        args.seqs, args.batches, args.repeats = "512", "1", 3
    max_tokens = args.max_tokens if args.max_tokens is not None else (0 if cuda else 4096)
    naive_max = args.naive_max_gib if args.naive_max_gib is not None else (60.0 if cuda else 3.0)
    variants = [v for v in args.variants.split(",") if v]
    bad = set(variants) - set(VARIANTS)
    if bad:
        raise SystemExit(f"unknown variants {sorted(bad)}; choose from {VARIANTS}")

    t0 = time.perf_counter()
    tl, hf = load(set(variants), args.device, args.dtype, args.model)
    load_s = time.perf_counter() - t0
    cfg = tl.cfg
    probes = make_probes(tl)
    print(f"loaded in {load_s:.1f}s: {cfg.model_name} ({cfg.n_layers} layers, {cfg.n_heads} heads, "
          f"d_model {cfg.d_model}, n_ctx {cfg.n_ctx}) on {args.device}")  # fmt: skip

    # correctness: cliff's scores equal the official way's (HF hidden_states[-1] @ w)
    check = tokens(cfg.d_vocab, 2, 64, args.device)
    fns = build_fns({"cliff", "hf_hidden", "cliff_unfused"}, tl, hf, check, probes)
    a = torch.stack([tr.scores for tr in fns["cliff"]()])
    b_ = fns["hf_hidden"]()
    max_diff = float((a - b_).abs().max())
    sdpa_diff = float((a - torch.stack([tr.scores for tr in fns["cliff_unfused"]()])).abs().max())
    print(
        f"cliff vs HF hidden_states[-1] probe scores: max |diff| = {max_diff:.2e}; cliff vs cliff_unfused {sdpa_diff:.2e}"
    )

    rows, skipped = [], []
    seqs = [int(x) for x in args.seqs.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    bf16 = None
    if args.bf16 or args.bf16_only:
        bf16 = bf16_check(tl, hf, probes, args.device, seqs[0], batches[0], args.repeats, args.model)
        print("bf16:", bf16, flush=True)
        if args.bf16_only:
            seqs = []
    for t in seqs:
        for b in batches:
            if t > cfg.n_ctx:
                skipped.append({"seq": t, "batch": b, "why": f"seq > n_ctx={cfg.n_ctx}"})
                continue
            if max_tokens and t * b > max_tokens:
                skipped.append(
                    {"seq": t, "batch": b, "why": f"batch*seq={t * b} > --max-tokens {max_tokens}"}
                )
                continue
            vs = list(variants)
            est = naive_cache_gib(cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_mlp, b, t)
            if "tl_cache" in vs and est > naive_max:
                vs.remove("tl_cache")
                skipped.append({"seq": t, "batch": b, "variant": "tl_cache",
                                "why": f"unfiltered cache ~{est:.1f} GiB > --naive-max-gib {naive_max}"})  # fmt: skip
            toks = tokens(cfg.d_vocab, b, t, args.device)
            res = interleaved(build_fns(set(vs), tl, hf, toks, probes), args.repeats, device=args.device)
            row = {"seq": t, "batch": b, "tokens": t * b, "naive_cache_est_gib": round(est, 2)}
            for v, r in res.items():
                row[f"{v}_s"] = r["median_s"]
                row[f"{v}_tok_s"] = t * b / r["median_s"]
                row[f"{v}_times_s"] = r["times_s"]
            base = res.get("hf_forward", {}).get("median_s")
            if base:
                for v in res:
                    row[f"{v}_speed_vs_hf"] = base / res[v]["median_s"]  # tokens/s ratio
            rows.append(row)
            print(fmt_table([row], ["seq", "batch", *[f"{v}_s" for v in vs]]), flush=True)

    memory = {}
    if not args.no_memory and rows:
        for v in variants:
            if v in ("hf_eager", "cliff_mid"):  # diagnostics: their memory is hf_forward's / below cliff's
                continue
            vc = [(r["seq"], r["batch"]) for r in rows if v != "tl_cache" or "tl_cache_s" in r]
            if not vc:
                continue
            if cuda:  # the CUDA allocator's peak is per call and resettable: no fresh process needed
                memory[v] = variant_peaks(v, tl, hf, probes, cfg.d_vocab, vc, args.device)
            else:  # RSS is per process: one fresh process per variant
                args_ = ["--_mem", v, "--_configs", ",".join(f"{t}x{b}" for t, b in vc), "--device",
                         args.device, "--dtype", args.dtype, "--model", args.model]  # fmt: skip
                if args.threads:
                    args_ += ["--threads", str(args.threads)]
                memory[v] = measure_in_subprocess(Path(__file__), args_)
            print(f"memory {v}: {memory[v]}", flush=True)
        key = "gpu_peak_delta_mib" if cuda else "rss_peak_delta_mib"
        for r in rows:
            for v in variants:
                m = memory.get(v, {}).get(f"{r['seq']}x{r['batch']}")
                if m:
                    r[f"{v}_peak_mib"] = m[key]

    cols = ["seq", "batch", "tokens"]
    cols += [f"{v}_speed_vs_hf" for v in variants if v != "hf_forward"]
    cols += [f"{v}_peak_mib" for v in variants]
    print()
    print("tokens/s relative to a plain HF forward (target: cliff >= 0.9); peak memory delta (MiB)")
    print(fmt_table(rows, cols))
    for s in skipped:
        print("skipped:", s)
    target = [r.get("cliff_speed_vs_hf") for r in rows if r.get("cliff_speed_vs_hf")]
    result = {
        "benchmark": "trajectory",
        "model": args.model,
        "dtype": args.dtype,
        "machine": machine_info(args.device),
        "command": "python " + " ".join(sys.argv),
        "repeats": args.repeats,
        "variants": variants,
        "target": "cliff tokens/s >= 0.9x hf_forward tokens/s",
        "target_met": bool(target) and min(target) >= 0.9,
        "min_cliff_speed_vs_hf": min(target) if target else None,
        "scores_max_abs_diff_vs_hf_hidden": max_diff,
        "scores_max_abs_diff_fused_vs_unfused": sdpa_diff,
        "load_s": load_s,
        "rows": rows,
        "skipped": skipped,
        "memory": memory,
        "bf16": bf16,
    }
    name = "bench_trajectory_bf16" if args.bf16_only else "bench_trajectory"
    print(f"wrote {save_result(name, result, args.out)}")


if __name__ == "__main__":
    main()
