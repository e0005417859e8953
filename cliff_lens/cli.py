"""The ``cliff-lens`` command line.

Subcommands: ``models``, ``run``, ``demo``, one per stage of a run directory (from the stage
registry :data:`cliff_lens.pipeline.STAGES`: ``rollouts``, ``labels``, ``probe``, ``trace``,
``heads``, ``ablate``, ``select``, ``report``), and the pool-scoring tools for Cliff-as-a-Judge at
scale (``score --shard i/n``, ``merge``). ``run``'s flags are generated from
:class:`cliff_lens.config.RunConfig`'s fields, so every setting is a flag with one default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import add_config_arguments
from .pipeline import STAGES

__all__ = ["main", "build_parser"]


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
    add_config_arguments(p)

    p = sub.add_parser("demo", help="the whole analysis on the embedded cliff organism, offline")
    p.add_argument("--out", default="cliff-demo", help="run directory (default ./cliff-demo)")
    p.add_argument("--quick", action="store_true", help="a small run (CI-sized, a few minutes on a CPU)")

    for stage in STAGES:  # one subcommand per stage of the registry
        p = sub.add_parser(
            stage.command,
            help=f"(re)run the {stage.name} stage of a run directory: {stage.help}".replace("%", "%%"),
        )
        p.add_argument("run_dir", help="run directory made by `cliff-lens run`")
        p.add_argument("--force", action="store_true", help="re-run even if inputs are unchanged")

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
    logging.basicConfig(level=logging.INFO, format="[cliff-lens] %(message)s", stream=sys.stderr)
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
        cols = ("name", "architecture", "template", "route", "note")
        widths = {c: max(len(str(r.get(c, ""))) for r in rows) for c in cols[:-1]}
        for r in rows:
            print(
                "  ".join(f"{str(r.get(c, '')):<{widths[c]}}" for c in cols[:-1])
                + "  "
                + str(r.get("note", ""))
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
        stats = score_pool(
            model, probe, args.rollouts, args.out, shard=args.shard, batch_size=args.batch_size
        )
        print(f"scored {stats['scored']} rollouts into {args.out} ({stats})")
        return 0

    from cliff_lens import pipeline

    if args.command == "run":
        from .config import config_from_args

        cfg = config_from_args(args)
        results = pipeline.run(cfg)
        print(pipeline.summary(results, cfg.out))
        return 0
    if args.command == "demo":
        cfg = pipeline.demo_config(Path(args.out), quick=args.quick)
        results = pipeline.run(cfg)
        print(pipeline.summary(results, cfg.out))
        return 0
    force = args.force or pipeline.get_stage(args.command).name == "report"  # a report is always rebuilt
    results = pipeline.run_stage(Path(args.run_dir), args.command, force=force)
    print(pipeline.summary(results, Path(args.run_dir)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
