"""Which head ranking predicts the per-head causal effect: the paper's mean write or the contrast?

On a ``cliff-lens run`` / ``demo`` directory (heads stage with ``scores_contrast``), mean-ablate
each tested head alone and measure the change of the probe logit at the last end-of-thinking token
of the complied (jailbroken) harmful rollouts (``cliff_lens.ablation.head_causal_effects``). The
tested heads are the union of the top ``--n-heads`` of each ranking and ``--n-random`` random
others (so that the correlation is not computed on the extremes only). For each ranking: the
Spearman correlation of its scores with the causal contribution (``-effect``) over the tested
heads, with a 95% bootstrap interval over heads, and the mean causal contribution of its top-k%
heads. The ASR comparison of the two top-k% ablations (paired McNemar) is in the run's own
``ablation.json`` (setting ``top-3% contrast``, key ``vs_paper_ranking``). Usage::

    python benchmarks/contrast_vs_mean.py --run-dir DEMO_DIR [--n-heads 20] [--n-random 20] [--all-heads]

``--all-heads`` tests every head before the probe layer (no selection on the rankings, so the
correlation is not inflated by testing their extremes). The two Spearman correlations share their
heads, so their difference gets a paired bootstrap interval over heads.

Writes ``benchmarks/results/contrast_vs_mean.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _spearman_ci(
    a: np.ndarray, c: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    from scipy.stats import spearmanr

    rho = float(spearmanr(a, c).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, a.size, a.size)
        r = spearmanr(a[i], c[i]).statistic
        if np.isfinite(r):
            boots.append(r)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return rho, float(lo), float(hi)


def _paired_spearman_diff(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, float]:
    """rho(a, c) - rho(b, c) with a paired bootstrap over heads: difference, 95% CI, two-sided p."""
    from scipy.stats import spearmanr

    diff = float(spearmanr(a, c).statistic - spearmanr(b, c).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, a.size, a.size)
        d = spearmanr(a[i], c[i]).statistic - spearmanr(b[i], c[i]).statistic
        if np.isfinite(d):
            boots.append(d)
    arr = np.asarray(boots)
    lo, hi = np.quantile(arr, [0.025, 0.975])
    p = min(1.0, 2 * min(float(np.mean(arr <= 0)), float(np.mean(arr >= 0))))
    return diff, float(lo), float(hi), p


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
    complied = [
        r
        for r in read_rollouts(args.run_dir / "rollouts.jsonl")
        if r.harmful and r.thinking_closed and labels.get(r.id, {}).get("refused") is False
    ]
    toks = [tpl.tokenize(model.tokenizer, r.prompt, r.thinking or "", "").truncate() for r in complied]
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
    for name, sc in rankings.items():
        a, c = sc[ok].numpy(), contribution[ok].numpy()
        rho, lo, hi = _spearman_ci(a, c)
        top = [(li, hi_) for li, hi_, _ in suppression_heads(sc, n=k)]
        top_c = [float(contribution[li, hi_]) for li, hi_ in top if not torch.isnan(contribution[li, hi_])]
        out["rankings"][name] = {
            "spearman_with_causal_contribution": rho,
            "spearman_ci95": [lo, hi],
            "top_heads": [list(t) for t in top],
            "top_heads_mean_causal_contribution": float(np.mean(top_c)) if top_c else None,
        }
    a_m, a_c, c_ = rankings["mean"][ok].numpy(), rankings["contrast"][ok].numpy(), contribution[ok].numpy()
    d, dlo, dhi, dp = _paired_spearman_diff(a_m, a_c, c_)
    out["mean_minus_contrast_spearman"] = {"difference": d, "ci95": [dlo, dhi], "paired_bootstrap_p": dp}
    out["wall_s"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, out)
    print(json.dumps({k: out[k] for k in ("rankings", "mean_minus_contrast_spearman")}, indent=1))


if __name__ == "__main__":
    main()
