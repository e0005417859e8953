"""Which head ranking predicts the per-head causal effect: the paper's mean write or the contrast?

On a ``cliff-lens run`` / ``demo`` directory (heads stage with ``scores_contrast``), mean-ablate
each tested head alone and measure the change of the probe logit at the last end-of-thinking token
of the complied (jailbroken) harmful rollouts (``cliff_lens.ablation.head_causal_effects``). The
tested heads are the union of the top ``--n-heads`` of each ranking and ``--n-random`` random
others (so that the correlation is not computed on the extremes only). For each ranking: the
Spearman correlation of its scores with the causal contribution (``-effect``) over the tested
heads, with a 95% bootstrap interval over ROLLOUTS, and the mean causal contribution of its top-k%
heads. The ASR comparison of the two top-k% ablations (paired McNemar) is in the run's own
``ablation.json`` (setting ``top-3% contrast``, key ``vs_paper_ranking``). Usage::

    python benchmarks/contrast_vs_mean.py --run-dir DEMO_DIR [--n-heads 20] [--n-random 20] [--all-heads]

``--all-heads`` tests every head before the probe layer (no selection on the rankings, so the
correlation is not inflated by testing their extremes). The two Spearman correlations share their
heads and rollouts, so their difference gets a paired bootstrap interval over the same resamples.

The bootstrap resamples rollouts, the units both the scores and the causal effects are averages
over (the heads are fixed, not a sample): each resample draws the refused and the complied
harmful rollouts with replacement, separately (so the contrast always has both groups), and
recomputes from the per-rollout numbers the paper's score (mean write over all harmful
rollouts), the contrast (complied minus refused mean write) and each tested head's causal
contribution (mean over the resampled complied rollouts), then both Spearman correlations. The
per-rollout writes are recomputed here with each rollout's cross-fitted fold probe, as the heads
stage computes them (``scores_max_abs_diff_vs_heads_json`` checks that they reproduce
``heads.json``); the causal effects use the final probe.

Writes ``benchmarks/results/contrast_vs_mean.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _rollout_bootstrap_all(
    per_attr: np.ndarray,
    refused_idx: np.ndarray,
    complied_idx: np.ndarray,
    other_idx: np.ndarray,
    per_causal: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Spearman correlations recomputed on rollout resamples.

    ``per_attr``: ``[n_harmful, n_tested]`` per-rollout direct writes of the tested heads;
    ``refused_idx`` / ``complied_idx`` / ``other_idx``: rows of the refused / complied /
    unlabelled rollouts (each group resampled within itself; the unlabelled ones enter the
    paper's mean only);
    ``per_causal``: ``[n_tested, n_complied]`` per-rollout causal effects on the complied
    rollouts (column ``j`` is row ``complied_idx[j]``). Returns the ``n_boot`` resampled
    ``rho_mean``, ``rho_contrast`` (NaN where a resample gives a constant ranking).
    """
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    out = {"rho_mean": np.full(n_boot, np.nan), "rho_contrast": np.full(n_boot, np.nan)}
    n_r, n_c, n_o = refused_idx.size, complied_idx.size, other_idx.size
    for b in range(n_boot):
        jr = rng.integers(0, n_r, n_r)
        jc = rng.integers(0, n_c, n_c)
        ref, comp = per_attr[refused_idx[jr]], per_attr[complied_idx[jc]]
        oth = per_attr[other_idx[rng.integers(0, n_o, n_o)]] if n_o else per_attr[:0]
        mean_score = np.concatenate([ref, comp, oth]).mean(0)
        contrast = comp.mean(0) - ref.mean(0)
        contribution = -per_causal[:, jc].mean(1)
        out["rho_mean"][b] = spearmanr(mean_score, contribution).statistic
        out["rho_contrast"][b] = spearmanr(contrast, contribution).statistic
    return out


def _per_rollout_attributions(run_dir, model, probe, harmful, toks, heads, cfg, args) -> torch.Tensor:
    """``[n_harmful, n_layers, n_heads]`` direct writes at the end-of-thinking tokens, each
    rollout read by the fold probe that did not see it (as the heads stage does)."""
    from cliff_lens.data import fallback_request_id
    from cliff_lens.heads import head_attributions
    from cliff_lens.probe import CrossFit

    variant = (
        heads.get("variant")
        or cfg.get("head_variant")
        or ("norm_aware" if probe.hook == "final_norm_weighted" else "raw")
    )
    folds = CrossFit.load(run_dir / "probe_folds", model=model, final=probe)
    groups = [getattr(r, "request_id", None) or fallback_request_id(r.prompt, r.meta) for r in harmful]
    per = torch.full((len(harmful), model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    for _, p, where in folds.split_by_probe([r.id for r in harmful], groups=groups):
        part = head_attributions(
            model,
            [toks[i] for i in where],
            p,
            positions="end_of_thinking",
            variant=variant,
            batch_size=args.batch_size,
            per_example=True,
        )
        per[where] = part.float()
    return per


def _ci(x: np.ndarray) -> tuple[float, float, int]:
    """Percentile 95% interval of the finite values of ``x`` and how many were finite."""
    f = x[np.isfinite(x)]
    lo, hi = np.quantile(f, [0.025, 0.975])
    return float(lo), float(hi), int(f.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--n-heads", type=int, default=20, help="top heads of each ranking to test")
    ap.add_argument("--n-random", type=int, default=20, help="random other heads to test")
    ap.add_argument("--all-heads", action="store_true", help="test every head (no selection)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "contrast_vs_mean.json"))
    args = ap.parse_args()

    from cliff_lens import get_template, load_model, read_rollouts
    from cliff_lens.ablation import head_causal_effects, load_head_means
    from cliff_lens.heads import n_top_heads, suppression_heads
    from cliff_lens.io import atomic_write_json, iter_jsonl
    from cliff_lens.probe import RefusalProbe

    t0 = time.time()
    run = json.loads((args.run_dir / "run.json").read_text())
    cfg = run["config"]
    model = load_model(cfg["model"])
    probe = RefusalProbe.load(args.run_dir / "probe", model=model)
    heads = json.loads((args.run_dir / "heads.json").read_text())
    if "scores_contrast" not in heads:
        raise SystemExit("heads.json has no scores_contrast (needs refused and complied harmful rollouts)")
    rankings = {
        "mean": torch.tensor(heads["scores"], dtype=torch.float32),
        "contrast": torch.tensor(heads["scores_contrast"], dtype=torch.float32),
    }
    labels = {d["id"]: d for d in iter_jsonl(args.run_dir / "labels.jsonl")}
    tpl = get_template(cfg.get("template") or model.cliff_template)
    harmful = [r for r in read_rollouts(args.run_dir / "rollouts.jsonl") if r.harmful and r.thinking_closed]
    refused_of = [labels.get(r.id, {}).get("refused") for r in harmful]
    complied_idx = np.array([i for i, v in enumerate(refused_of) if v is False], dtype=int)
    refused_idx = np.array([i for i, v in enumerate(refused_of) if v is True], dtype=int)
    other_idx = np.array([i for i, v in enumerate(refused_of) if v is None], dtype=int)
    harmful_toks = [tpl.tokenize(model.tokenizer, r.prompt, r.thinking or "", "").truncate() for r in harmful]
    complied = [harmful[i] for i in complied_idx]
    toks = [harmful_toks[i] for i in complied_idx]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    tested = set()
    for sc in rankings.values():
        tested.update((li, hi) for li, hi, _ in suppression_heads(sc, n=args.n_heads))
    rng = np.random.default_rng(0)
    others = [(li, hi) for li in range(L) for hi in range(H) if (li, hi) not in tested]
    tested.update(others[i] for i in rng.choice(len(others), min(args.n_random, len(others)), replace=False))
    if args.all_heads:
        tested = {(li, hi) for li in range(L) for hi in range(H) if not torch.isnan(rankings["mean"][li, hi])}
    tested_list = sorted(tested)
    means = load_head_means(args.run_dir / "head_means.safetensors", model=model)
    ce = head_causal_effects(
        model, toks, probe, heads=tested_list, mode="mean", means=means, batch_size=args.batch_size
    )
    contribution = -ce.grid  # attribution sign convention: negative = lowers refusal
    per_attr = _per_rollout_attributions(args.run_dir, model, probe, harmful, harmful_toks, heads, cfg, args)
    ok = ~torch.isnan(contribution)
    k = n_top_heads(L * H, cfg.get("top_percents", [3.0])[0])
    out: dict = {
        "command": f"python benchmarks/contrast_vs_mean.py --run-dir {args.run_dir} --n-heads {args.n_heads} "
        f"--n-random {args.n_random}" + (" --all-heads" if args.all_heads else ""),
        "head_selection": "every head with a score"
        if args.all_heads
        else "top n of each ranking + random others",
        "run_config": {key: cfg.get(key) for key in ("model", "harmful", "n_harmful", "top_percents")},
        "n_complied_rollouts": len(complied),
        "n_tested_heads": len(tested_list),
        "causal_effect": "mean over complied harmful rollouts of the probe-logit change at the last "
        "end-of-thinking token when the head alone is mean-ablated; contribution = -effect",
        "rankings": {},
    }
    from scipy.stats import spearmanr

    # the tested heads with a causal effect, as (layer, head) rows of per_attr / ce.per_example
    keep = [j for j, (li, hi_) in enumerate(ce.heads) if bool(ok[li, hi_])]
    kept_heads = [ce.heads[j] for j in keep]
    pa = per_attr[:, [li for li, _ in kept_heads], [hi_ for _, hi_ in kept_heads]].numpy().astype(np.float64)
    pc = ce.per_example[keep].numpy().astype(np.float64)
    # the "other" (unlabelled) harmful rollouts count in the paper's mean, not in the contrast
    boot = _rollout_bootstrap_all(pa, refused_idx, complied_idx, other_idx, pc)
    recomputed = {
        "mean": np.nanmean(pa, 0),
        "contrast": pa[complied_idx].mean(0) - pa[refused_idx].mean(0),
    }
    out["bootstrap"] = (
        "over rollouts: refused, complied (and unlabelled) harmful rollouts resampled with replacement "
        "separately, 2000 resamples, seed 0; both rankings' scores and the causal contributions "
        "recomputed per resample; percentile intervals"
    )
    out["n_refused_rollouts"] = int(refused_idx.size)
    for name, sc in rankings.items():
        a, c = sc[ok].numpy(), contribution[ok].numpy()
        rho = float(spearmanr(a, c).statistic)
        lo, hi, n_fin = _ci(boot[f"rho_{name}"])
        ref = np.array([float(sc[li, hi_]) for li, hi_ in kept_heads])
        diff_vs_json = float(np.max(np.abs(recomputed[name] - ref)))
        top = [(li, hi_) for li, hi_, _ in suppression_heads(sc, n=k)]
        top_c = [float(contribution[li, hi_]) for li, hi_ in top if not torch.isnan(contribution[li, hi_])]
        out["rankings"][name] = {
            "spearman_with_causal_contribution": rho,
            "spearman_ci95": [lo, hi],
            "n_finite_resamples": n_fin,
            "scores_max_abs_diff_vs_heads_json": diff_vs_json,
            "top_heads": [list(t) for t in top],
            "top_heads_mean_causal_contribution": float(np.mean(top_c)) if top_c else None,
        }
    d = (
        out["rankings"]["mean"]["spearman_with_causal_contribution"]
        - out["rankings"]["contrast"]["spearman_with_causal_contribution"]
    )
    arr = boot["rho_mean"] - boot["rho_contrast"]
    arr = arr[np.isfinite(arr)]
    dlo, dhi = (float(v) for v in np.quantile(arr, [0.025, 0.975]))
    dp = min(1.0, 2 * min(float(np.mean(arr <= 0)), float(np.mean(arr >= 0))))
    out["mean_minus_contrast_spearman"] = {"difference": d, "ci95": [dlo, dhi], "paired_bootstrap_p": dp}
    out["wall_s"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, out)
    print(json.dumps({k: out[k] for k in ("rankings", "mean_minus_contrast_spearman")}, indent=1))


if __name__ == "__main__":
    main()
