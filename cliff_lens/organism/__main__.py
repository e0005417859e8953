"""``python -m cliff_lens.organism build|evaluate|install`` (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of the organism tools."""
    logging.basicConfig(level=logging.INFO, format="[cliff_lens.organism] %(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)

    if args.cmd == "build":
        from .build import BuildConfig, build

        cfg = BuildConfig()
        for name in (
            "epochs",
            "seed",
            "lr",
            "first_layer",
            "max_harmful",
            "max_harmless",
            "max_near_miss",
            "intent_weight",
            "intent_eot_weight",
        ):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
        dest = build(args.out, cfg, resume=not args.no_resume)
        print(f"adapter written to {dest}")
    elif args.cmd == "evaluate":
        from .evaluate import evaluate

        evaluate(
            args.out,
            adapter_dir=args.adapter,
            n=args.n,
            max_new_tokens=args.max_new_tokens,
            probe=not args.skip_probe,
        )
    elif args.cmd == "install":
        from . import ADAPTER_DIR
        from .build import export_adapter_dir

        src = args.out / "adapter" if args.epoch is None else args.out / f"ckpt-epoch{args.epoch}"
        try:
            export_adapter_dir(src, ADAPTER_DIR)
        except FileNotFoundError as e:
            print(f"{e}; run `build --out {args.out}` first", file=sys.stderr)
            return 2
        print(f"installed {src} -> {ADAPTER_DIR}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The ``build`` / ``evaluate`` / ``install`` command-line parser."""
    ap = argparse.ArgumentParser(prog="python -m cliff_lens.organism", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="synthesise data and train the LoRA adapter into OUT/adapter")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--epochs", type=int, default=None)
    b.add_argument("--seed", type=int, default=None)
    b.add_argument("--lr", type=float, default=None)
    b.add_argument("--first-layer", type=int, default=None, help="LoRA on layers >= this (default 18)")
    b.add_argument("--max-harmful", type=int, default=None, help="harmful train prompts used (default: all)")
    b.add_argument("--max-harmless", type=int, default=None, help="harmless train prompts used (default 80)")
    b.add_argument(
        "--max-near-miss", type=int, default=None, help="near-miss train prompts used (default 60)"
    )
    b.add_argument(
        "--intent-weight",
        type=float,
        default=None,
        help="weight of the refusal-intent objective (0 = off; see BuildConfig.intent_weight)",
    )
    b.add_argument(
        "--intent-eot-weight",
        type=float,
        default=None,
        help="per-token weight of the end-of-thinking intent targets of harmful examples (see BuildConfig)",
    )
    b.add_argument("--no-resume", action="store_true", help="start over even if OUT holds checkpoints")
    e = sub.add_parser("evaluate", help="held-out behaviour + cliff measurements into OUT/eval.json")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--adapter", type=Path, default=None, help="adapter dir (default: the shipped one)")
    e.add_argument("--n", type=int, default=50, help="prompts per held-out set")
    e.add_argument("--max-new-tokens", type=int, default=120)
    e.add_argument("--skip-probe", action="store_true")
    i = sub.add_parser("install", help="copy OUT/adapter into the package (cliff_lens/organism/adapter)")
    i.add_argument("--out", required=True, type=Path)
    i.add_argument("--epoch", type=int, default=None, help="install OUT/ckpt-epochK instead of OUT/adapter")
    return ap


if __name__ == "__main__":
    sys.exit(main())
