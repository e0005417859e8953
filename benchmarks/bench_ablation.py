"""Benchmark: the ablation stage's generation, one call per setting vs every setting side by side.

On the cliff organism with the demo's generation settings (greedy, ``--max-new-tokens`` 80, the
package's framed-harmful test prompts), :func:`cliff_lens.evaluate.attack_success` measures ASR
under ``n`` random 3% head sets (mean ablation) two ways:

* ``per_setting``  ``side_by_side=False``: one generation call per setting, ``--batch-size`` rows;
* ``side_by_side`` the default: one call over (setting x prompt) rows, each row ablating its own
  setting's heads (``row_ablation_hooks``), ``--rows`` rows per forward pass.

For each ``n`` in ``--settings`` the two run in interleaved rounds with rotating order (so load
drift on a shared machine hits both alike), and the script checks that they give the same rows
(every outcome and answer). Writes ``benchmarks/results/bench_ablation.json`` with the ratio.

Usage::

    .venv/bin/python benchmarks/bench_ablation.py --settings 1,8,24 --prompts 32
    .venv/bin/python benchmarks/bench_ablation.py --quick      # 1 and 4 settings, 8 prompts
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_table, interleaved, machine_info, save_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="1,8,24", help="numbers of random head sets, comma-separated")
    p.add_argument("--prompts", type=int, default=32, help="framed-harmful prompts per setting")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass, one call per setting")
    p.add_argument("--rows", type=int, default=64, help="rows per forward pass, side by side")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 and 4 settings, 8 prompts, 32 new tokens")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.settings, a.prompts, a.max_new_tokens = "1,4", 8, 32

    import cliff_lens
    from cliff_lens.ablation import compute_head_means
    from cliff_lens.evaluate import attack_success
    from cliff_lens.templates import get_template

    model = cliff_lens.load_model("cliff-organism")
    prompts = [x.text for x in cliff_lens.load_prompts("cliff-jailbreak", split="test")][: a.prompts]
    tpl = get_template(model.cliff_template)
    ref = [
        tpl.tokenize(model.tokenizer, x.text, "", "")
        for x in cliff_lens.load_prompts("cliff-harmless", split="train")[:16]
    ]
    means = compute_head_means(model, ref)
    rows = []
    for n in [int(s) for s in a.settings.split(",") if s.strip()]:
        got: dict[str, list] = {}

        def run(side: bool, n: int = n, got: dict = got) -> None:
            got["side_by_side" if side else "per_setting"] = attack_success(
                model,
                prompts,
                top_percents=(3,),
                random_seeds=range(n),
                baseline=False,
                mode="mean",
                means=means,
                max_new_tokens=a.max_new_tokens,
                batch_size=a.rows if side else a.batch_size,
                side_by_side=side,
            )

        t = interleaved(
            {"per_setting": lambda: run(False), "side_by_side": lambda: run(True)}, a.repeats, warmup=0
        )
        same = json.dumps(got["per_setting"], sort_keys=True) == json.dumps(
            got["side_by_side"], sort_keys=True
        )
        outs = [
            (x["harmful_outcomes"], y["harmful_outcomes"])
            for x, y in zip(got["per_setting"], got["side_by_side"])
            if "harmful_outcomes" in x
        ]
        agree = sum(o == q for xs, ys in outs for o, q in zip(xs, ys)) / max(
            1, sum(len(xs) for xs, _ in outs)
        )
        per, side = t["per_setting"]["median_s"], t["side_by_side"]["median_s"]
        rows.append(
            {
                "settings": n,
                "prompt_generations": n * len(prompts),
                "per_setting_s": per,
                "side_by_side_s": side,
                "speedup": per / side,
                "rows_identical": same,
                "outcome_agreement": agree,
            }
        )
        print(fmt_table(rows[-1:], list(rows[-1])), flush=True)
    result = {
        "benchmark": "bench_ablation",
        "model": "cliff-organism",
        "args": vars(a),
        "machine": machine_info(),
        "rows": rows,
    }
    path = save_result("bench_ablation", result, a.out)
    print(fmt_table(rows, list(rows[0])))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
