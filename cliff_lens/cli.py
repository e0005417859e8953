"""The ``cliff-lens`` command line.

Subcommands: ``models``, ``run``, ``demo``, single stages of a run (``rollouts``, ``probe``,
``trace``, ``heads``, ``ablate``, ``select``, ``report``), and the pool-scoring tools for
Cliff-as-a-Judge at scale (``score --shard i/n``, ``merge``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _add_run_options(p: argparse.ArgumentParser, *, required_model: bool) -> None:
    p.add_argument("--model", required=required_model, help="model source (see `cliff-lens models`)")
    p.add_argument(
        "--harmful", default="cliff-harmful", help="harmful prompt set: name or file (default: cliff-harmful)"
    )
    p.add_argument(
        "--harmless", default="cliff-harmless", help="harmless prompt set (default: cliff-harmless)"
    )
    p.add_argument("--rollouts", default=None, help="import rollouts (JSONL) instead of generating them")
    p.add_argument("--template", default=None, help="reasoning template (default: from the model)")
    p.add_argument(
        "--probe-layer", type=int, default=None, help="probe layer (default: final norm with weight)"
    )
    p.add_argument("--top-percent", type=float, default=3.0, help="percent of heads to ablate (default 3)")
    p.add_argument("--n-harmful", type=int, default=None, help="number of harmful prompts")
    p.add_argument("--n-harmless", type=int, default=None, help="number of harmless prompts")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget per rollout")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--random-seeds", type=int, default=None, help="number of random-head baselines")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``cliff-lens``."""
    parser = argparse.ArgumentParser(
        prog="cliff-lens",
        description="Find, explain and repair the refusal cliff of reasoning models (TransformerLens).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the models cliff_lens knows how to load")

    p = sub.add_parser(
        "run", help="the whole analysis: rollouts, probe, trajectories, heads, ablation, report"
    )
    _add_run_options(p, required_model=True)

    p = sub.add_parser("demo", help="the whole analysis on the embedded cliff organism, offline")
    p.add_argument("--out", default="cliff-demo", help="run directory (default ./cliff-demo)")
    p.add_argument("--quick", action="store_true", help="a small run (CI-sized, a few minutes on a CPU)")

    for name, help_ in [
        ("rollouts", "(re)run the rollout + labelling stage of an existing run directory"),
        ("probe", "(re)run the probe stage"),
        ("trace", "(re)run the trajectory stage"),
        ("heads", "(re)run the head-attribution stage"),
        ("ablate", "(re)run the ablation / ASR stage"),
        ("select", "(re)run the Cliff-as-a-Judge selection stage"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("run_dir", help="run directory made by `cliff-lens run`")
        p.add_argument("--force", action="store_true", help="re-run even if inputs are unchanged")

    p = sub.add_parser("report", help="(re)build report.html of a run directory")
    p.add_argument("run_dir")

    p = sub.add_parser("score", help="score a rollout pool with a probe (streamed, resumable, shardable)")
    p.add_argument("--model", required=True)
    p.add_argument("--probe", required=True, help="probe path prefix (X for X.safetensors + X.json)")
    p.add_argument("--rollouts", required=True, help="rollout pool (JSONL)")
    p.add_argument("--out", required=True, help="output JSONL (one line per rollout)")
    p.add_argument(
        "--shard",
        default="0/1",
        help="i/n: score only shard i of n (default 0/1); 'auto' reads SLURM/torchrun env",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")

    p = sub.add_parser("merge", help="merge shard outputs of `score` into one file")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cliff-lens`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"cliff-lens {args.command}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "models":
        from cliff_lens.models import list_models

        rows = list_models()
        w = max(len(r["name"]) for r in rows)
        for r in rows:
            print(
                f"{r['name']:<{w}}  {r.get('architecture', ''):<10} {r.get('template', ''):<20} {r.get('note', '')}"
            )
        return 0
    if args.command == "merge":
        from cliff_lens.scoring import merge_scores

        n = merge_scores([Path(p) for p in args.inputs], Path(args.out))
        print(f"merged {n} scored rollouts into {args.out}")
        return 0
    if args.command == "score":
        from cliff_lens.models import load_model
        from cliff_lens.probe import RefusalProbe
        from cliff_lens.scoring import score_pool

        model = load_model(args.model, device=args.device, dtype=args.dtype)
        probe = RefusalProbe.load(args.probe, model=model)
        n = score_pool(model, probe, args.rollouts, args.out, shard=args.shard, batch_size=args.batch_size)
        print(f"scored {n} rollouts into {args.out}")
        return 0

    from cliff_lens import pipeline

    if args.command == "run":
        cfg = pipeline.RunConfig.from_args(args)
        results = pipeline.run(cfg)
        print(pipeline.summary(results, cfg.out))
        return 0
    if args.command == "demo":
        cfg = pipeline.demo_config(Path(args.out), quick=args.quick)
        results = pipeline.run(cfg)
        print(pipeline.summary(results, cfg.out))
        return 0
    if args.command == "report":
        from cliff_lens.viz.report import build_report

        path = build_report(Path(args.run_dir))
        print(f"wrote {path}")
        return 0
    stage = {"trace": "trajectories"}.get(args.command, args.command)
    results = pipeline.run_stage(Path(args.run_dir), stage, force=args.force)
    print(pipeline.summary(results, Path(args.run_dir)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
