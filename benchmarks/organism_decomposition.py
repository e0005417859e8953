"""Where the organism's end-of-thinking refusal separation sits: heads vs MLPs, layer by layer.

For every harmful rollout of a ``cliff-lens run`` / ``demo`` directory, the probe's norm-aware
direction at the last end-of-thinking token is decomposed exactly into embedding, per-head,
attention-bias and MLP terms (``cliff_lens.heads.direct_attribution_decomposition``). The means
over refused and over complied rollouts, and their difference (what separates "refuse" from
"comply"), are summed per layer for attention and for MLPs. The same decomposition at the last
THINKING token gives the cliff itself: last end-of-thinking minus last thinking token, per group
(what writes the drop). Finally the run's multi-layer trajectories give the layer x position
view: per layer and group, the mean score over the last 8 thinking tokens and at the last
end-of-thinking token. Usage::

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
    plateau_side: dict[str, list] = {"refused": [], "complied": []}
    for r in read_rollouts(args.run_dir / "rollouts.jsonl"):
        lab = labels.get(r.id, {})
        if not r.harmful or lab.get("refused") is None or not r.thinking_closed:
            continue
        rec = tpl.tokenize(model.tokenizer, r.prompt, r.thinking or "", "").truncate()
        pos = rec.spans["end_of_thinking"][1] - 1  # the last end-of-thinking token
        d = direct_attribution_decomposition(model, rec, probe, pos=pos, variant="norm_aware")
        p0 = direct_attribution_decomposition(
            model, rec, probe, pos=rec.spans["thinking"][1] - 1, variant="norm_aware"
        )
        g = "refused" if lab["refused"] else "complied"
        groups[g].append(d)
        plateau_side[g].append(p0)
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

    def contrast(pos: list, neg: list, total: float, order) -> dict:
        """Per-layer heads / MLP sums of mean(pos) - mean(neg) and the 10 heads first in ``order``."""
        dh = mean(pos, lambda d: d.heads) - mean(neg, lambda d: d.heads)
        dm = mean(pos, lambda d: d.mlp) - mean(neg, lambda d: d.mlp)
        return {
            "total": total,
            "heads_sum": float(dh.sum()),
            "mlp_sum": float(dm.sum()),
            "heads_per_layer": dh.sum(1).tolist(),
            "mlp_per_layer": dm.tolist(),
            "top_heads": [
                {"layer": int(i) // dh.shape[1], "head": int(i) % dh.shape[1], "diff": float(dh.flatten()[i])}
                for i in order(dh.flatten())[:10]
            ],
        }

    res["refused_minus_complied"] = contrast(
        groups["refused"],
        groups["complied"],
        res["refused"]["total"] - res["complied"]["total"],
        lambda x: x.abs().argsort(descending=True),
    )
    # the cliff: last end-of-thinking token minus last thinking token, per group (most negative heads first)
    res["cliff_final_minus_last_thinking"] = {
        g: contrast(
            groups[g],
            plateau_side[g],
            float(mean(groups[g], lambda d: d.total) - mean(plateau_side[g], lambda d: d.total)),
            lambda x: x.argsort(),
        )
        for g in groups
    }
    res["layer_position"] = _layer_position(args.run_dir)
    atomic_write_json(args.out, res)
    diff = res["refused_minus_complied"]
    print(f"refused n={res['refused']['n']} total {res['refused']['total']:.2f}; "
          f"complied n={res['complied']['n']} total {res['complied']['total']:.2f}")  # fmt: skip
    print(f"refused - complied: total {diff['total']:.2f} = heads {diff['heads_sum']:.2f} + MLPs "
          f"{diff['mlp_sum']:.2f} (+ embed/bias)")  # fmt: skip
    for i, (h, m) in enumerate(zip(diff["heads_per_layer"], diff["mlp_per_layer"], strict=True)):
        print(f"  layer {i:2d}: heads {h:+7.2f}  mlp {m:+7.2f}")
    print("top heads by |diff|:", [(t["layer"], t["head"], round(t["diff"], 2)) for t in diff["top_heads"]])
    for g, c in res["cliff_final_minus_last_thinking"].items():
        print(f"cliff ({g}): last eot - last thinking token = {c['total']:+.2f} = heads {c['heads_sum']:+.2f}"
              f" + MLPs {c['mlp_sum']:+.2f}; most negative heads "
              f"{[(t['layer'], t['head'], round(t['diff'], 1)) for t in c['top_heads'][:5]]}")  # fmt: skip
    if res["layer_position"]:
        print("layer x position (mean score: last 8 thinking tokens -> last end-of-thinking token)")
        for g, rows in res["layer_position"].items():
            print(
                f"  {g}: "
                + "  ".join(f"L{r['layer']} {r['late_thinking']:.2f}->{r['final']:.2f}" for r in rows)
            )
    print(f"wrote {args.out}")


def _layer_position(run_dir: Path, late: int = 8) -> dict:
    """Per group and scored layer: mean score over the last ``late`` thinking tokens and at the last
    end-of-thinking token (the run's multi-layer trajectories; empty when it has none)."""
    from cliff_lens.trajectory import load_trajectories

    prefix = run_dir / "trajectories"
    if not prefix.with_name("trajectories.json").exists():
        return {}
    trajs = load_trajectories(prefix)
    meta = json.loads(prefix.with_name("trajectories.json").read_text())["meta"]
    if trajs[0].scores.ndim != 2:
        return {}
    out: dict = {}
    for g in sorted(set(meta["groups"])):
        ts = [t for t, gg in zip(trajs, meta["groups"]) if gg == g]
        rows = []
        for li, layer in enumerate(trajs[0].layers):
            a = [
                t.scores[
                    li, max(t.spans["thinking"][0], t.spans["thinking"][1] - late) : t.spans["thinking"][1]
                ].mean()
                for t in ts
            ]
            f = [t.scores[li, t.spans["end_of_thinking"][1] - 1] for t in ts]
            rows.append(
                {
                    "layer": layer,
                    "late_thinking": float(torch.stack(a).nanmean()),
                    "final": float(torch.stack(f).mean()),
                }
            )
        out[f"{g} (n={len(ts)})"] = rows
    return out


if __name__ == "__main__":
    main()
