"""Where the organism's end-of-thinking refusal separation sits: heads vs MLPs, layer by layer.

For every harmful rollout of a ``cliff-lens run`` / ``demo`` directory, the probe's norm-aware
direction at the last end-of-thinking token is decomposed exactly into embedding, per-head,
attention-bias and MLP terms (``cliff_lens.heads.direct_attribution_decomposition``). The means
over refused and over complied rollouts, and their difference (what separates "refuse" from
"comply"), are summed per layer for attention and for MLPs. Usage::

    python benchmarks/organism_decomposition.py --run-dir DEMO_DIR [--out FILE]

Writes ``benchmarks/results/organism_decomposition.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "organism_decomposition.json"))
    args = ap.parse_args()

    from cliff_lens import RefusalProbe, get_template, load_model, read_rollouts
    from cliff_lens.heads import direct_attribution_decomposition
    from cliff_lens.io import atomic_write_json, iter_jsonl

    run = json.loads((args.run_dir / "run.json").read_text())
    model = load_model(run["config"]["model"])
    probe = RefusalProbe.load(str(args.run_dir / "probe.safetensors"), model=model)
    labels = {d["id"]: d for d in iter_jsonl(args.run_dir / "labels.jsonl")}
    tpl = get_template(run["config"].get("template") or getattr(model, "cliff_template", "generic"))
    groups: dict[str, list] = {"refused": [], "complied": []}
    for r in read_rollouts(args.run_dir / "rollouts.jsonl"):
        lab = labels.get(r.id, {})
        if not r.harmful or lab.get("refused") is None or not r.thinking_closed:
            continue
        rec = tpl.tokenize(model.tokenizer, r.prompt, r.thinking or "", "").truncate()
        pos = rec.spans["end_of_thinking"][1] - 1  # the last end-of-thinking token
        d = direct_attribution_decomposition(model, rec, probe, pos=pos, variant="norm_aware")
        groups["refused" if lab["refused"] else "complied"].append(d)
    if not groups["refused"] or not groups["complied"]:
        sys.exit("need refused and complied harmful rollouts in the run directory")

    def mean(ds, f):
        return torch.stack([torch.as_tensor(f(d), dtype=torch.float64) for d in ds]).mean(0)

    res: dict = {"run_dir": str(args.run_dir), "probe_hook": probe.hook, "variant": "norm_aware",
                 "position": "last end-of-thinking token"}  # fmt: skip
    for g, ds in groups.items():
        res[g] = {
            "n": len(ds),
            "total": float(mean(ds, lambda d: d.total)),
            "embed": float(mean(ds, lambda d: d.embed)),
            "heads_sum": float(mean(ds, lambda d: d.heads.sum())),
            "mlp_sum": float(mean(ds, lambda d: d.mlp.sum())),
            "attn_bias_sum": float(mean(ds, lambda d: d.attn_bias.sum())),
            "max_abs_error": max(abs(d.error) for d in ds),
        }
    heads_diff = mean(groups["refused"], lambda d: d.heads) - mean(groups["complied"], lambda d: d.heads)
    mlp_diff = mean(groups["refused"], lambda d: d.mlp) - mean(groups["complied"], lambda d: d.mlp)
    res["refused_minus_complied"] = {
        "total": res["refused"]["total"] - res["complied"]["total"],
        "heads_sum": float(heads_diff.sum()),
        "mlp_sum": float(mlp_diff.sum()),
        "heads_per_layer": heads_diff.sum(1).tolist(),
        "mlp_per_layer": mlp_diff.tolist(),
        "top_heads": [
            {"layer": int(i) // heads_diff.shape[1], "head": int(i) % heads_diff.shape[1], "diff": float(heads_diff.flatten()[i])}
            for i in heads_diff.flatten().abs().argsort(descending=True)[:10]
        ],
    }  # fmt: skip
    atomic_write_json(args.out, res)
    diff = res["refused_minus_complied"]
    print(f"refused n={res['refused']['n']} total {res['refused']['total']:.2f}; "
          f"complied n={res['complied']['n']} total {res['complied']['total']:.2f}")  # fmt: skip
    print(f"refused - complied: total {diff['total']:.2f} = heads {diff['heads_sum']:.2f} + MLPs "
          f"{diff['mlp_sum']:.2f} (+ embed/bias)")  # fmt: skip
    for i, (h, m) in enumerate(zip(diff["heads_per_layer"], diff["mlp_per_layer"], strict=True)):
        print(f"  layer {i:2d}: heads {h:+7.2f}  mlp {m:+7.2f}")
    print("top heads by |diff|:", [(t["layer"], t["head"], round(t["diff"], 2)) for t in diff["top_heads"]])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
