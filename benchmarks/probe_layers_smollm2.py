"""Refusal-probe accuracy per layer on SmolLM2-135M-Instruct: AdvBench (harmful) vs Alpaca
(harmless) prompts, with XSTest's unsafe vs safe prompts as the out-of-distribution test.

SmolLM2 is not a reasoning model, so the probe reads the last token of the chat prompt
(``<|im_start|>assistant\\n``), the position where the model decides how to answer; labels are
the datasets' harm labels (the paper trains on the model's own refusals, which needs
rollouts). One forward pass per batch caches every layer's residual at that token.

    python benchmarks/probe_layers_smollm2.py [--n 300]

Prints a table and writes benchmarks/results/probe_layers_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cliff_lens import RefusalProbe, extract_activations, load_model, load_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="prompts per class (AdvBench / Alpaca)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "probe_layers_smollm2.json"))
    args = ap.parse_args()
    t0 = time.time()
    model = load_model("smollm2-135m-instruct")
    tok = model.tokenizer

    def encode(prompts):
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p.text}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        return [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]

    harm = load_prompts("advbench", limit=args.n)
    safe = load_prompts("alpaca", limit=args.n)
    xs = load_prompts("xstest")
    layers = list(range(model.cfg.n_layers))
    X = extract_activations(model, encode(harm + safe), layers=layers, positions="last", batch_size=32)
    y = [1] * len(harm) + [0] * len(safe)
    Xo = extract_activations(model, encode(xs), layers=layers, positions="last", batch_size=32)
    yo = [int(bool(p.harmful)) for p in xs]
    rows = []
    for i, L in enumerate(layers):
        probe = RefusalProbe.fit(X[:, i], y, seed=0, hook="blocks.{L}.hook_resid_post", layer=L)
        val = probe.metrics["val"]
        ood = probe.evaluate(Xo[:, i], yo, name="xstest")
        rows.append(
            {
                "layer": L,
                "val_accuracy": val["accuracy"],
                "val_auroc": val["auroc"],
                "xstest_accuracy": ood["accuracy"],
                "xstest_auroc": ood["auroc"],
            }
        )
        print(
            f"layer {L:2d}  val acc {val['accuracy']:.3f}  AUROC {val['auroc']:.3f}   "
            f"XSTest acc {ood['accuracy']:.3f}  AUROC {ood['auroc']:.3f}",
            flush=True,
        )
    out = {
        "model": "smollm2-135m-instruct (zoo, dequantised Q4_1 GGUF)",
        "n_per_class": args.n,
        "n_xstest": len(xs),
        "xstest_unsafe": sum(yo),
        "position": "last token of the chat prompt",
        "rows": rows,
        "seconds": round(time.time() - t0, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
