"""Mean-ablate the heads that WRITE the organism's cliff (by exact decomposition) instead of the
paper's top-scored heads, on the same prompts as the demo's ablation stage.

``organism_decomposition.py`` finds, per head, how much of the complied rollouts' drop (last
end-of-thinking minus last thinking token, along the probe) it writes; this script takes the 9
(3% of 270) most negative of those heads and measures ASR / over-refusal with them mean-ablated
(means, probe and prompts from the demo run). Usage::

    python benchmarks/organism_decomposition.py --run-dir DEMO_DIR --out DECOMP.json
    python benchmarks/organism_drop_heads.py --run-dir DEMO_DIR --decomposition DECOMP.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--decomposition", required=True, type=Path)
    ap.add_argument("--n", type=int, default=16, help="harmful and harmless prompts (the demo's n_ablation)")
    args = ap.parse_args()

    from cliff_lens import RefusalProbe, load_model
    from cliff_lens.ablation import load_head_means
    from cliff_lens.evaluate import attack_success
    from cliff_lens.io import iter_jsonl

    cfg = json.loads((args.run_dir / "run.json").read_text())["config"]
    model = load_model(cfg["model"])
    probe = RefusalProbe.load(str(args.run_dir / "probe.safetensors"), model=model)
    rows = list(iter_jsonl(args.run_dir / "rollouts.jsonl"))
    top = json.loads(args.decomposition.read_text())["cliff_final_minus_last_thinking"]["complied"][
        "top_heads"
    ]
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for t in top:  # the 10 most negative; top_percents=3 below picks the 9 (3% of 270) most negative
        scores[t["layer"], t["head"]] = t["diff"]
    # the demo's ablation prompts: its jailbreak prompts, and its harmless prompts
    harmful = [r for r in rows if r.get("harmful") and r.get("source") != "cliff-harmful"][: args.n]
    harmless = [r for r in rows if r.get("harmful") is False][: args.n]
    res = attack_success(
        model,
        [r["prompt"] for r in harmful],
        [r["prompt"] for r in harmless],
        scores=scores,
        top_percents=(3.0,),
        random_seeds=(),
        mode="mean",
        means=load_head_means(args.run_dir / "head_means.safetensors", model=model),
        probe=probe,
        max_new_tokens=cfg["ablation_max_new_tokens"] or cfg["max_new_tokens"],
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
    )
    for r in res:
        r = r if isinstance(r, dict) else r.to_dict()
        print(f"{r['setting']:10s} heads {r['heads']}: ASR {r['asr']:.3f}  over-refusal {r['over_refusal']:.3f}  "
              f"end score {r['refusal_score_end']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
