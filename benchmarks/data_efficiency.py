"""Cliff-as-a-Judge data efficiency on the embedded cliff organism, in one command.

    .venv/bin/python benchmarks/data_efficiency.py --out runs/data_efficiency [--pool 150] [--quick]

Stages (each resumable: a finished file is reused):
1. pool: framed-harmful rollouts of the organism (package harmful prompts, train split, in the
   training framings), greedy, HF ``generate`` -> ``OUT/pool.jsonl``;
2. probe: the paper's recipe on the organism's own rollouts (plain harmful prompts it refused vs
   harmless prompts it helped, keyword judge on the answer; final-norm-with-weight read at the
   last end-of-thinking token; logistic regression) -> ``OUT/probe.safetensors`` + ``.json``;
3. scores: ``score_pool`` -> ``OUT/scores.jsonl``;
4. ``data_efficiency``: LoRA SFT on the top p% (5/10/25/50/100) by cliff, final-score, random
   (3 seeds) and rule-based selection; ASR on held-out framed AdvBench prompts (held-out
   framings), over-refusal on Alpaca -> ``OUT/data_efficiency.json`` + ``.svg``.

``--quick`` shrinks everything (pool 40, percents 25/100, 1 random seed, 10+10 eval prompts)
to check the plumbing in a few minutes.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rollouts(hf, tok, prompts, ids, model_name, max_new_tokens, extra):
    from cliff_lens.repair import generate_answers

    gens = generate_answers(
        hf, tok, prompts, template="generic", max_new_tokens=max_new_tokens, batch_size=16
    )
    return [
        {
            "id": i,
            "prompt": g["prompt"],
            "thinking": g["thinking"],
            "answer": g["answer"],
            "thinking_closed": g["closed"],
            "meta": {"model": model_name, "template": "generic", **extra},
        }
        for i, g in zip(ids, gens)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/data_efficiency")
    ap.add_argument("--pool", type=int, default=150, help="framed-harmful rollouts in the pool")
    ap.add_argument(
        "--n-eval", type=int, default=40, help="held-out harmful and harmless eval prompts (each)"
    )
    ap.add_argument("--n-probe", type=int, default=40, help="rollouts per probe class")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None,
                    help="train every selection for exactly this many optimizer steps (equal compute) "
                         "instead of --epochs passes")  # fmt: skip
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--model", default="cliff-organism", help="zoo name / HF dir (default: the organism)")
    ap.add_argument("--percents", default="5,10,25,50,100", help="pool percents to fine-tune on")
    ap.add_argument("--seeds", default="0,1,2", help="random-selection seeds")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    percents = tuple(float(x) for x in args.percents.split(","))
    seeds = tuple(int(x) for x in args.seeds.split(","))
    if args.quick:
        args.pool, args.n_eval, args.n_probe, args.max_new_tokens = 40, 10, 16, 96
        percents, seeds = (25, 100), (0,)

    import torch

    from cliff_lens.data import load_prompts
    from cliff_lens.efficiency import data_efficiency
    from cliff_lens.framings import HELDOUT_FRAMINGS, TRAIN_FRAMINGS, apply_framing
    from cliff_lens.io import iter_jsonl, write_jsonl
    from cliff_lens.judges import KeywordJudge
    from cliff_lens.models import load_model
    from cliff_lens.organism import organism_hf_model
    from cliff_lens.organism.synth import load_package_prompts
    from cliff_lens.repair import RepairConfig
    from cliff_lens.scoring import score_pool

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.model == "cliff-organism":
        hf, tok = organism_hf_model()
    else:
        from cliff_lens.models import load_hf

        hf, tok = load_hf(args.model)
    tl = load_model(args.model)
    name = tl.cfg.model_name
    judge = KeywordJudge()
    rng = random.Random(0)

    # 1. pool
    pool_path = out / "pool.jsonl"
    if not pool_path.exists():
        reqs = [r["prompt"] for r in load_package_prompts("harmful", split="train")]
        prompts = [apply_framing(rng.choice(TRAIN_FRAMINGS), rng.choice(reqs)) for _ in range(args.pool)]
        ids = [f"pool-{k:04d}" for k in range(args.pool)]
        write_jsonl(pool_path, _rollouts(hf, tok, prompts, ids, name, args.max_new_tokens, {"framed": True}))
    pool = list(iter_jsonl(pool_path))
    print(f"pool: {len(pool)} rollouts ({time.perf_counter() - t0:.0f}s)", flush=True)

    # 2. probe
    probe_path = out / "probe"
    from cliff_lens.probe import RefusalProbe

    if not Path(str(probe_path) + ".safetensors").exists():
        from cliff_lens.activations import extract_activations
        from cliff_lens.templates import get_template

        harm = [r["prompt"] for r in load_package_prompts("harmful", split="train")][: args.n_probe * 2]
        safe = [r["prompt"] for r in load_package_prompts("harmless", split="train")][: args.n_probe * 2]
        ro = _rollouts(
            hf,
            tok,
            harm + safe,
            [f"p{k}" for k in range(len(harm) + len(safe))],
            name,
            args.max_new_tokens,
            {},
        )
        lab = []
        for k, r in enumerate(ro):
            refused = r["thinking_closed"] and bool(r["answer"]) and judge.judge(r["answer"]).refused
            if k < len(harm) and refused:
                lab.append((r, 1))
            elif k >= len(harm) and r["thinking_closed"] and not refused:
                lab.append((r, 0))
        tpl = get_template("generic", tokenizer=tl.tokenizer)
        recs = [tpl.tokenize(tl.tokenizer, r["prompt"], r["thinking"], "").truncate() for r, _ in lab]
        acts = extract_activations(tl, recs, hook="final_norm_weighted", positions="last", progress=False)
        probe = RefusalProbe.fit(
            acts, torch.tensor([y for _, y in lab]), model=tl, meta={"template": "generic"}
        )
        probe.save(str(probe_path))
    probe = RefusalProbe.load(str(probe_path) + ".safetensors", model=tl)
    print(f"probe: val {probe.metrics.get('val', {})} ({time.perf_counter() - t0:.0f}s)", flush=True)

    # 3. scores
    scores_path = out / "scores.jsonl"
    score_pool(tl, probe, pool_path, scores_path, batch_size=8, progress=False)
    del tl

    # 4. experiment
    adv = [p.text for p in load_prompts("advbench", limit=400)]
    alp = [p.text for p in load_prompts("alpaca", limit=400)]
    rng2 = random.Random(1)
    harmful = [apply_framing(rng2.choice(HELDOUT_FRAMINGS), t) for t in rng2.sample(adv, args.n_eval)]
    harmless = rng2.sample(alp, args.n_eval)
    res = data_efficiency(
        hf,
        tok,
        pool,
        scores_path,
        harmful,
        harmless,
        out,
        template="generic",
        judge=judge,
        percents=percents,
        random_seeds=seeds,
        config=RepairConfig(epochs=args.epochs, lr=args.lr, batch_size=8, max_len=512, steps=args.steps),
        max_new_tokens=args.max_new_tokens,
        progress=False,
    )
    print(f"done in {time.perf_counter() - t0:.0f}s: baseline {res['baseline']}")
    for m, pts in res["curves"].items():
        if m != "random_per_seed":
            print(m, [(e["percent"], round(e["asr"], 3), round(e["over_refusal"], 3)) for e in pts])


if __name__ == "__main__":
    main()
