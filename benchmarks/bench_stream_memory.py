"""Bounded memory: streaming a rollout file costs the same memory at 10k and 100k lines.

Writes two rollout files (10k and 100k lines, ~0.6 KB a line, thinking + answer text) and, each
in a fresh subprocess, streams one through ``cliff_lens.io.iter_jsonl`` or
``cliff_lens.data.read_rollouts`` (counting records, keeping none). Reports the peak Python heap
(tracemalloc) and the process peak RSS (``ru_maxrss``). A ``list(read_rollouts(...))`` row shows
what loading the whole file would cost, for contrast.

    .venv/bin/python benchmarks/bench_stream_memory.py [--sizes 10000 100000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, tracemalloc
mode, path = sys.argv[1], sys.argv[2]
import cliff_lens.data, cliff_lens.io  # imported before measuring
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t0 = time.perf_counter()
if mode == "iter_jsonl":
    n = sum(1 for _ in cliff_lens.io.iter_jsonl(path))
elif mode == "read_rollouts":
    n = sum(1 for _ in cliff_lens.data.read_rollouts(path))
else:  # load the whole file, for contrast
    rs = list(cliff_lens.data.read_rollouts(path)); n = len(rs)
dt = time.perf_counter() - t0
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "seconds": dt, "tracemalloc_peak_mb": peak / 2**20,
                  "rss_before_mb": rss0 / 1024, "rss_peak_mb": rss / 1024}))
"""


def write_file(path: Path, n: int) -> Path:
    """A rollout JSONL file with ``n`` lines (written in chunks, not held in memory)."""
    think = "the user asks for something . let me think about whether it is safe . " * 4
    with open(path, "w", encoding="utf-8") as f:
        chunk = []
        for i in range(n):
            rec = {
                "id": f"r{i:07d}",
                "prompt": f"prompt number {i} about a topic",
                "thinking": think,
                "answer": "sorry , i cannot help with that ." if i % 2 else "sure , here is how .",
                "source": "bench",
                "harmful": bool(i % 2),
                "thinking_closed": True,
                "meta": {"n_new_tokens": 128},
            }
            chunk.append(json.dumps(rec) + "\n")
            if len(chunk) == 5000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return path


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    ap.add_argument("--no-load-all", action="store_true", help="skip the load-everything contrast row")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        rows = []
        for n in args.sizes:
            t0 = time.perf_counter()
            p = write_file(Path(d) / f"rollouts_{n}.jsonl", n)
            size_mb = p.stat().st_size / 2**20
            print(f"wrote {n} lines ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            modes = ["iter_jsonl", "read_rollouts"] + ([] if args.no_load_all else ["list(read_rollouts)"])
            for mode in modes:
                r = measure(mode, p)
                rows.append({"lines": n, "file_mb": size_mb, "mode": mode, **r})
        print(
            f"{'reader':<22}{'lines':>8}{'file MB':>9}{'heap peak MB':>14}{'RSS before MB':>15}{'RSS peak MB':>13}{'s':>7}"
        )
        for r in rows:
            assert r["n"] == r["lines"]
            print(
                f"{r['mode']:<22}{r['lines']:>8}{r['file_mb']:>9.1f}{r['tracemalloc_peak_mb']:>14.2f}"
                f"{r['rss_before_mb']:>15.1f}{r['rss_peak_mb']:>13.1f}{r['seconds']:>7.1f}"
            )


if __name__ == "__main__":
    main()
