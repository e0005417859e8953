"""Benchmark: the end-to-end demo, wall time per pipeline stage.

Either runs ``python -m cliff_lens.cli demo --quick --out DIR`` (fresh directory, so every
stage really runs) and then reads ``DIR/run.json``, or, with ``--run-dir``, only reads the
per-stage ``seconds`` an existing run directory recorded.

Usage::

    .venv/bin/python benchmarks/bench_demo.py                     # runs demo --quick (minutes)
    .venv/bin/python benchmarks/bench_demo.py --full              # demo without --quick
    .venv/bin/python benchmarks/bench_demo.py --run-dir runs/x    # timings of an existing run

Writes ``benchmarks/results/bench_demo.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RssSampler, fmt_table, machine_info, save_result  # noqa: E402, F401


def stage_timings(run_dir: Path) -> list[dict]:
    """``[{"stage", "seconds", "finished"}]`` from ``run_dir/run.json`` in recorded order."""
    path = run_dir / "run.json"
    if not path.exists():
        raise SystemExit(f"{run_dir} has no run.json; run `cliff-lens demo --out {run_dir}` first")
    state = json.loads(path.read_text())
    return [
        {"stage": k, "seconds": v.get("seconds"), "finished": bool(v.get("finished"))}
        for k, v in state.get("stages", {}).items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None, help="read timings of an existing run directory")
    ap.add_argument("--full", action="store_true", help="run the demo without --quick")
    ap.add_argument("--keep", default=None, help="directory for the demo run (default: a temp dir, removed)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    total_s = peak_mib = None
    cmd = None
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        run_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cliff-demo-bench-"))
        if args.keep and run_dir.exists() and any(run_dir.iterdir()):
            raise SystemExit(
                f"{run_dir} is not empty; pass an empty/new --keep directory (stages would be skipped)"
            )
        cmd = [sys.executable, "-m", "cliff_lens.cli", "demo", "--out", str(run_dir)]
        if not args.full:
            cmd.insert(4, "--quick")
        print("running:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd)
        import resource

        rc = p.wait(timeout=args.timeout)
        total_s = time.perf_counter() - t0
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB -> MiB (Linux)
        if rc != 0:
            raise SystemExit(f"demo exited with code {rc}; see its output above")
    rows = stage_timings(run_dir)
    stage_sum = sum(r["seconds"] or 0 for r in rows)
    for r in rows:
        r["share"] = (r["seconds"] or 0) / stage_sum if stage_sum else None
    print(fmt_table(rows, ["stage", "seconds", "share", "finished"]))
    if total_s is not None:
        print(f"total wall {total_s:.1f}s (stages {stage_sum:.1f}s; the rest is start-up/model load); "
              f"peak RSS of the demo process {peak_mib:.0f} MiB")  # fmt: skip
    result = {
        "benchmark": "demo",
        "machine": machine_info("cpu"),
        "command": "python " + " ".join(sys.argv),
        "demo_command": " ".join(cmd) if cmd else None,
        "run_dir": str(run_dir),
        "stages": rows,
        "stages_total_s": stage_sum,
        "wall_s": total_s,
        "peak_rss_mib": peak_mib,
    }
    print(f"wrote {save_result('bench_demo', result, args.out)}")
    if cmd and not args.keep and os.environ.get("CLIFF_BENCH_KEEP") is None:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
