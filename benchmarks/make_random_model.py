"""Write a randomly initialised HF model directory with a real reasoning model's architecture.

Speed and memory depend on the architecture and dtype, not on the weight values, so the
benchmarks can measure a DeepSeek-R1 distill's shapes where its weights cannot be downloaded
(CI, the offline GPU machine). The tokenizer is SmolLM2's from the offline zoo (its ids, < 49152,
are valid in every vocabulary below); the benchmarks feed random token ids anyway.

Usage::

    python benchmarks/make_random_model.py --arch r1-distill-qwen-1.5b --out /tmp/r1-1.5b-random
    python benchmarks/bench_trajectory.py --model /tmp/r1-1.5b-random --dtype bfloat16 --device cuda

Never use such a directory for anything but timing: its outputs are noise.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

# Shapes from the published config.json of each model (Qwen2 architecture).
ARCHS: dict[str, dict] = {
    "r1-distill-qwen-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    "r1-distill-qwen-7b": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=131072, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    # plumbing check only (seconds on a CPU)
    "tiny-qwen2": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=49152, max_position_embeddings=4096, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
}  # fmt: skip


def make(
    arch: str, out: Path, dtype: str = "bfloat16", seed: int = 0, tokenizer_from: Path | None = None
) -> Path:
    """Write ``out`` (config, random safetensors weights, SmolLM2 tokenizer files, copied from
    ``tokenizer_from`` or the offline zoo)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from cliff_lens.zoo import smollm2_hf_dir

    if arch not in ARCHS:
        raise SystemExit(f"unknown --arch {arch!r}; choose from {sorted(ARCHS)}")
    torch.manual_seed(seed)
    cfg = Qwen2Config(**ARCHS[arch], torch_dtype=dtype)
    cfg.architectures = ["Qwen2ForCausalLM"]
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    src = Path(tokenizer_from) if tokenizer_from else Path(smollm2_hf_dir())
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / f).exists():
            shutil.copy(src / f, out / f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="r1-distill-qwen-1.5b", choices=sorted(ARCHS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokenizer-from", default=None, help="a directory with SmolLM2's tokenizer files "
                    "(default: the offline zoo's)")  # fmt: skip
    args = ap.parse_args()
    t = time.perf_counter()
    p = make(args.arch, Path(args.out), args.dtype, tokenizer_from=args.tokenizer_from)
    print(f"wrote {p} ({args.arch}, random {args.dtype} weights) in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
