"""Where the organism's end-of-thinking refusal separation sits: heads vs MLPs, layer by layer.

For every harmful rollout of a ``cliff-lens run`` / ``demo`` directory whose thinking closed, the
probe's LOGIT is decomposed exactly into embedding, per-head, attention-bias and MLP terms
(``cliff_lens.heads.direct_attribution_decomposition(..., variant="with_bias")``) at two
positions: the last thinking token ``t1`` and the last end-of-thinking token ``t2``. With the
final norm's scale ``sigma`` frozen at each position, the logit is
``bias + norm_bias + sum_c a_c(t) / sigma(t)``, where ``a_c`` is component ``c``'s write along
the probe's reading vector (``a_c / s`` is its share of the norm-aware numerator ``u . x``).

The cliff (what this script calls the "drop") is the logit change ``logit(t2) - logit(t1)``.
Per component ``Delta_c = a_c(t2) / sigma(t2) - a_c(t1) / sigma(t1)`` (the bias and norm bias
cancel), and the ``Delta_c`` sum exactly to the logit change. Each ``Delta_c`` is split in two:

- write change ``(a_c(t2) - a_c(t1)) / sigma(t2)``: the component writes something else;
- rms change ``a_c(t1) * (1 / sigma(t2) - 1 / sigma(t1))``: the same write, rescaled because the
  residual's rms changed.

The separation at ``t2`` (mean over refused minus mean over complied rollouts) is given for both
quantities: the logit (exact for the difference of mean logits) and the norm-aware numerator
``u . x`` (what the previous version of this script decomposed; not divided by ``sigma``).

The complied rollouts are also split by what the last sentence of their thinking says (a
keyword rule: it states the refusal, or it says it will help), and per-rollout totals are kept
(``per_rollout``).

Each rollout is decomposed with the probe that did not see it: the run's cross-fitted fold
probe for a rollout the probe was trained on (``probe_folds``, grouped by request, as the
trajectories and heads stages do), the final probe for the others (``probe_rule`` in the output).

Checks (asserted): each decomposition closes on the probe's own features (|error| small), the
per-rollout logit ``bias + total`` equals ``RefusalProbe.logit`` of ``extract_activations`` at
the probe's hook (1e-3 relative), and per rollout the ``Delta_c`` sum to that logit change (1e-3
relative). Finally the run's multi-layer trajectories give the layer x position view: per layer
and group, the mean score over the last 8 thinking tokens and at the last end-of-thinking token.
Usage::

    python benchmarks/organism_decomposition.py --run-dir DEMO_DIR [--out FILE]

Writes ``benchmarks/results/organism_decomposition.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch


def _close(a: float, b: float, rel: float = 1e-3, floor: float = 1e-3) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), floor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "organism_decomposition.json"))
    args = ap.parse_args()
    t_start = time.time()

    from cliff_lens import RefusalProbe, get_template, load_model, read_rollouts
    from cliff_lens.activations import extract_activations
    from cliff_lens.data import fallback_request_id
    from cliff_lens.heads import direct_attribution_decomposition
    from cliff_lens.io import atomic_write_json, iter_jsonl
    from cliff_lens.probe import CrossFit

    run = json.loads((args.run_dir / "run.json").read_text())
    model = load_model(run["config"]["model"])
    final = RefusalProbe.load(str(args.run_dir / "probe.safetensors"), model=model)
    folds = CrossFit.load(args.run_dir / "probe_folds", model=model, final=final)
    labels = {d["id"]: d for d in iter_jsonl(args.run_dir / "labels.jsonl")}
    every = list(read_rollouts(args.run_dir / "rollouts.jsonl"))
    reqs = [r.request_id or fallback_request_id(r.prompt, r.meta) for r in every]
    probe_of = {
        every[i].id: p
        for _, p, where in folds.split_by_probe([r.id for r in every], groups=reqs)
        for i in where
    }
    tpl = get_template(run["config"].get("template") or getattr(model, "cliff_template", "generic"))
    rows: dict[str, list[dict]] = {"refused": [], "complied": []}
    max_err = 0.0
    checked_numerator = False
    for r in every:
        lab = labels.get(r.id, {})
        if not r.harmful or lab.get("refused") is None or not r.thinking_closed:
            continue
        probe = probe_of[r.id]
        rec = tpl.tokenize(model.tokenizer, r.prompt, r.thinking or "", "").truncate()
        t1 = rec.spans["thinking"][1] - 1  # the last thinking token
        t2 = rec.spans["end_of_thinking"][1] - 1  # the last end-of-thinking token
        d1 = direct_attribution_decomposition(model, rec, probe, pos=t1, variant="with_bias")
        d2 = direct_attribution_decomposition(model, rec, probe, pos=t2, variant="with_bias")
        assert d1.position == t1 and d2.position == t2, (d1.position, d2.position, t1, t2)
        # the probe's own logit at both positions, from its features at its hook
        acts = extract_activations(model, [rec], hook=probe.hook, positions=[t1, t2], progress=False)
        own = probe.logit(torch.as_tensor(acts).reshape(2, -1)).double().tolist()
        for d, lo in ((d1, own[0]), (d2, own[1])):
            max_err = max(max_err, abs(d.error))
            assert abs(d.error) < 1e-3 * max(1.0, abs(d.resid_final)), f"decomposition error {d.error}"
            assert _close(d.bias + d.total, lo), f"decomposed logit {d.bias + d.total} != probe logit {lo}"
        if not checked_numerator:  # once: a_c / s is the norm-aware decomposition (the numerator u . x)
            n2 = direct_attribution_decomposition(model, rec, probe, pos=t2, variant="norm_aware")
            s_inv = probe.scale * d2.inv_scale
            assert _close(float(n2.heads.double().sum()), float(d2.heads.double().sum()) / s_inv), "numerator"
            assert _close(float(n2.mlp.double().sum()), float(d2.mlp.double().sum()) / s_inv), "numerator"
            checked_numerator = True
        row = _row(d1, d2, probe.scale)
        row["logit_probe"] = own
        row["id"] = r.id
        row["last_sentence"] = _SENT.split((r.thinking or "").strip())[-1]
        row["states_refusal"] = bool(_REFUSAL_WORDS.search(row["last_sentence"]))
        assert _close(row["delta"]["total"], own[1] - own[0]), (row["delta"]["total"], own[1] - own[0])
        rows["refused" if lab["refused"] else "complied"].append(row)
    if not rows["refused"] or not rows["complied"]:
        sys.exit("need refused and complied harmful rollouts in the run directory")

    res: dict = {
        "command": f"python benchmarks/organism_decomposition.py --run-dir {args.run_dir}",
        "run_dir": str(args.run_dir),
        "model": run["config"]["model"],
        "probe_rule": "each rollout by the probe that did not see it (fold probe, else the final probe)",
        "probe_hook": final.hook,
        "probe_scale": final.scale,
        "probe_bias": final.bias,
        "variant": "with_bias (logit, final-norm scale frozen per position); numerator = norm_aware u.x",
        "positions": {"t1": "last thinking token", "t2": "last end-of-thinking token"},
        "checks": {
            "max_abs_decomposition_error_logit": max_err,
            "components_sum_to_probe_logit_change_rel_tol": 1e-3,
            "decomposed_logit_equals_RefusalProbe_logit_rel_tol": 1e-3,
            "numerator_equals_norm_aware_decomposition": checked_numerator,
        },
    }
    for g, rs in rows.items():
        res[g] = {
            "n": len(rs),
            "logit_t1": _m(rs, lambda x: x["logit_probe"][0]),
            "logit_t2": _m(rs, lambda x: x["logit_probe"][1]),
            "score_t1": _m(rs, lambda x: _sig(x["logit_probe"][0])),
            "score_t2": _m(rs, lambda x: _sig(x["logit_probe"][1])),
            "sigma_t1": _m(rs, lambda x: x["sigma"][0]),
            "sigma_t2": _m(rs, lambda x: x["sigma"][1]),
        }

    # the drop: logit(t2) - logit(t1), per group, exact, split into write and rms change
    res["cliff_final_minus_last_thinking"] = {g: _drop(rs) for g, rs in rows.items()}
    # the separation at t2: mean(refused) - mean(complied), logit and numerator
    res["refused_minus_complied"] = {
        "logit": _sep(rows["refused"], rows["complied"], "t2_logit"),
        "numerator": _sep(rows["refused"], rows["complied"], "t2_num"),
    }
    # the complied rollouts split by what their thinking's last sentence says (a keyword rule)
    res["complied_by_stated_decision"] = {
        "rule": f"last thinking sentence matches /{_REFUSAL_WORDS.pattern}/i",
        **{
            name: _drop_summary([x for x in rows["complied"] if x["states_refusal"] is want])
            for name, want in (("states_refusal", True), ("states_help", False))
        },
    }
    res["per_rollout"] = [
        {
            "id": x["id"],
            "group": g,
            "logit_t1": x["logit_probe"][0],
            "logit_t2": x["logit_probe"][1],
            "sigma": x["sigma"],
            "delta": x["delta"]["total"],
            "heads": float(x["delta"]["heads"].sum()),
            "mlp": float(x["delta"]["mlp"].sum()),
            "other": float(x["delta"]["other"].sum()),
            "rms_change": float(sum(x["rms"][k].sum() for k in x["rms"])),
            "last_thinking_sentence": x["last_sentence"],
            "states_refusal": x["states_refusal"],
        }
        for g, xs in rows.items()
        for x in xs
    ]
    res["layer_position"] = _layer_position(args.run_dir)
    res["seconds"] = round(time.time() - t_start, 1)
    atomic_write_json(args.out, res)

    for g in rows:
        r0, c = res[g], res["cliff_final_minus_last_thinking"][g]
        print(f"{g} n={r0['n']}: logit {r0['logit_t1']:+.2f} -> {r0['logit_t2']:+.2f} "
              f"(score {r0['score_t1']:.3f} -> {r0['score_t2']:.3f}; sigma {r0['sigma_t1']:.2f} -> {r0['sigma_t2']:.2f})")  # fmt: skip
        print(f"  logit change {c['total']:+.3f} = heads {c['heads']['total']:+.3f} ({c['heads']['share']:.0%}) "
              f"+ MLPs {c['mlp']['total']:+.3f} ({c['mlp']['share']:.0%}) + embed/attn-bias "
              f"{c['other']['total']:+.3f}; write change {c['write_change_total']:+.3f}, rms change "
              f"{c['rms_change_total']:+.3f} ({c['rms_change_share']:.0%})")  # fmt: skip
        print(f"  heads: write {c['heads']['write']:+.3f} rms {c['heads']['rms']:+.3f}; MLPs: write "
              f"{c['mlp']['write']:+.3f} rms {c['mlp']['rms']:+.3f}")  # fmt: skip
        print(
            f"  most negative heads {[(t['layer'], t['head'], round(t['diff'], 3)) for t in c['top_heads'][:9]]}"
        )
        print(f"  numerator change (norm-aware u.x, not the logit): {c['numerator']['total']:+.1f} = heads "
              f"{c['numerator']['heads']:+.1f} + MLPs {c['numerator']['mlp']:+.1f}")  # fmt: skip
    for name, v in res["complied_by_stated_decision"].items():
        if isinstance(v, dict) and v.get("n"):
            print(f"complied, thinking {name} (n={v['n']}): logit {v['logit_t1']:+.2f} -> {v['logit_t2']:+.2f}, "
                  f"change {v['total']:+.3f} = heads {v['heads']:+.3f} + MLPs {v['mlp']:+.3f}; rms change "
                  f"{v['rms_change']:+.3f}")  # fmt: skip
    for q, s in res["refused_minus_complied"].items():
        print(f"refused - complied at t2 ({q}): {s['total']:+.3f} = heads {s['heads_sum']:+.3f} "
              f"({s['heads_sum'] / s['total']:.0%}) + MLPs {s['mlp_sum']:+.3f} ({s['mlp_sum'] / s['total']:.0%})")  # fmt: skip
    if res["layer_position"]:
        print("layer x position (mean score: last 8 thinking tokens -> last end-of-thinking token)")
        for g, lr in res["layer_position"].items():
            print(
                f"  {g}: "
                + "  ".join(f"L{x['layer']} {x['late_thinking']:.2f}->{x['final']:.2f}" for x in lr)
            )
    print(f"max |error| {max_err:.2e}; {res['seconds']} s; wrote {args.out}")


_SENT = re.compile(r"(?<=[.!?])\s+")
_REFUSAL_WORDS = re.compile(
    r"refus|say no|not help|won.t help|will not|cannot help|can.t help|decline|must not", re.I
)


def _drop_summary(rs: list[dict]) -> dict:
    """Mean logit change and its heads / MLP / rms-change parts over a subset of rollouts."""
    if not rs:
        return {"n": 0}
    return {
        "n": len(rs),
        "logit_t1": _m(rs, lambda x: x["logit_probe"][0]),
        "logit_t2": _m(rs, lambda x: x["logit_probe"][1]),
        "total": _m(rs, lambda x: x["delta"]["total"]),
        "heads": _m(rs, lambda x: float(x["delta"]["heads"].sum())),
        "mlp": _m(rs, lambda x: float(x["delta"]["mlp"].sum())),
        "rms_change": _m(rs, lambda x: float(sum(x["rms"][k].sum() for k in x["rms"]))),
    }


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _terms(d) -> dict[str, torch.Tensor]:
    """Each component's term of the logit (already divided by sigma): heads [L, H], mlp [L], other
    (embed + pos_embed + attention biases; the norm bias is position-independent and cancels)."""
    return {
        "heads": d.heads.double().nan_to_num(0.0),
        "mlp": d.mlp.double().nan_to_num(0.0),
        "other": torch.tensor(
            d.embed + d.pos_embed + float(d.attn_bias.double().nansum()), dtype=torch.float64
        ),
    }


def _row(d1, d2, scale: float) -> dict:
    """Per-rollout terms: the logit terms at t1 and t2, and the exact write / rms split of their change."""
    i1, i2 = d1.inv_scale, d2.inv_scale
    T1, T2 = _terms(d1), _terms(d2)
    row: dict = {
        "sigma": [1.0 / i1, 1.0 / i2],
        "t2_logit": T2,
        "t2_num": {},
        "write": {},
        "rms": {},
        "delta": {},
    }
    for k in T1:
        a1, a2 = T1[k] / i1, T2[k] / i2  # the writes a_c along s * u (the scaled numerator)
        row["write"][k] = (a2 - a1) * i2
        row["rms"][k] = a1 * (i2 - i1)
        row["delta"][k] = T2[k] - T1[k]
        row["t2_num"][k] = a2 / scale
        row["delta"]["num_" + k] = (a2 - a1) / scale
    row["delta"]["total"] = float(sum(float(row["delta"][k].sum()) for k in T1)) + (
        d2.norm_bias - d1.norm_bias
    )
    return row


def _m(rs: list[dict], f) -> float:
    return float(sum(f(r) for r in rs) / len(rs))


def _mt(rs: list[dict], f) -> torch.Tensor:
    return torch.stack([f(r) for r in rs]).mean(0)


def _drop(rs: list[dict]) -> dict:
    total = _m(rs, lambda r: r["delta"]["total"])
    out: dict = {"quantity": "probe logit change logit(t2) - logit(t1), mean over rollouts", "total": total}
    parts = {}
    for k in ("heads", "mlp", "other"):
        w = _mt(rs, lambda r, k=k: r["write"][k])
        s = _mt(rs, lambda r, k=k: r["rms"][k])
        parts[k] = (w, s)
        out[k] = {
            "total": float((w + s).sum()),
            "share": float((w + s).sum()) / total,
            "write": float(w.sum()),
            "rms": float(s.sum()),
        }
    assert _close(sum(out[k]["total"] for k in parts), total), "components do not sum to the logit change"
    out["write_change_total"] = sum(out[k]["write"] for k in parts)
    out["rms_change_total"] = sum(out[k]["rms"] for k in parts)
    out["rms_change_share"] = out["rms_change_total"] / total
    dh = parts["heads"][0] + parts["heads"][1]
    dm = parts["mlp"][0] + parts["mlp"][1]
    out["heads_sum"], out["mlp_sum"] = float(dh.sum()), float(dm.sum())
    out["heads_per_layer"] = dh.sum(1).tolist()
    out["heads_per_layer_rms"] = parts["heads"][1].sum(1).tolist()
    out["mlp_per_layer"] = dm.tolist()
    out["mlp_per_layer_rms"] = parts["mlp"][1].tolist()
    H = dh.shape[1]
    out["top_heads"] = [  # most negative logit change first ("diff", as organism_drop_heads.py reads it)
        {
            "layer": int(i) // H,
            "head": int(i) % H,
            "diff": float(dh.flatten()[i]),
            "rms_part": float(parts["heads"][1].flatten()[i]),
        }  # fmt: skip
        for i in dh.flatten().argsort()[:10]
    ]
    nh = _mt(rs, lambda r: r["delta"]["num_heads"])
    nm = _mt(rs, lambda r: r["delta"]["num_mlp"])
    no = _mt(rs, lambda r: r["delta"]["num_other"])
    out["numerator"] = {
        "quantity": "change of the norm-aware numerator u.x (not divided by sigma; the previous version's 'drop')",
        "total": float(nh.sum() + nm.sum() + no.sum()),
        "heads": float(nh.sum()),
        "mlp": float(nm.sum()),
        "top_heads": [
            {"layer": int(i) // H, "head": int(i) % H, "diff": float(nh.flatten()[i])}
            for i in nh.flatten().argsort()[:10]
        ],
    }
    return out


def _sep(pos: list[dict], neg: list[dict], key: str) -> dict:
    """mean(pos) - mean(neg) of the t2 terms (logit: exact for the difference of mean logits - bias)."""
    dh = _mt(pos, lambda r: r[key]["heads"]) - _mt(neg, lambda r: r[key]["heads"])
    dm = _mt(pos, lambda r: r[key]["mlp"]) - _mt(neg, lambda r: r[key]["mlp"])
    do = _mt(pos, lambda r: r[key]["other"]) - _mt(neg, lambda r: r[key]["other"])
    H = dh.shape[1]
    return {
        "quantity": (
            "probe logit at t2 (minus the bias), mean(refused) - mean(complied)"
            if key == "t2_logit"
            else "norm-aware numerator u.x at t2 (not divided by sigma), mean(refused) - mean(complied)"
        ),
        "total": float(dh.sum() + dm.sum() + do.sum()),
        "heads_sum": float(dh.sum()),
        "mlp_sum": float(dm.sum()),
        "other_sum": float(do.sum()),
        "heads_per_layer": dh.sum(1).tolist(),
        "mlp_per_layer": dm.tolist(),
        "top_heads": [
            {"layer": int(i) // H, "head": int(i) % H, "diff": float(dh.flatten()[i])}
            for i in dh.flatten().abs().argsort(descending=True)[:10]
        ],
    }


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
