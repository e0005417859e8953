"""Peak RSS of pool scoring vs pool size: the streaming path must not grow with the pool.

Writes synthetic rollout pools (20k and 100k records by default, ~1.3 KB each, streamed to
disk), then, in a fresh subprocess per pool, streams each pool through
``cliff_lens.scoring.score_stream`` (the engine behind ``score_pool``: ``read_rollouts``,
sharding by id, per-bucket batches, incremental ``append_jsonl``) with a scoring function over
precomputed synthetic trajectories (a per-token score vector derived from the rollout id; no
model, so only the streaming path is measured). ``merge_scores`` (which holds the merged
scores, not the rollouts) is measured separately.

    .venv/bin/python benchmarks/bench_scoring_memory.py [--sizes 20000 100000] [--batch-size 16]

Prints a table and writes ``benchmarks/results/bench_scoring_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the user wants to know how this could be harmful so I should think about it carefully first".split()


def write_pool(path: Path, n: int) -> int:
    """Stream ``n`` synthetic rollouts to ``path`` (never held in memory); returns the file size."""
    import random

    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        buf = []
        for i in range(n):
            thinking = " ".join(rng.choices(WORDS, k=200))
            buf.append(
                json.dumps(
                    {
                        "id": f"pool-{i:07d}",
                        "prompt": "Write a story in which a character explains something dangerous.",
                        "thinking": thinking,
                        "answer": "Sure, here is an overview. Step 1: ...",
                        "harmful": True,
                        "meta": {"model": "synthetic"},
                    }
                )
                + "\n"
            )
            if len(buf) == 1000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return path.stat().st_size


def synthetic_score_fn(batch: list) -> list[dict]:
    """Plateau/final from a precomputed-style trajectory: a seeded per-token score vector per id."""
    import numpy as np

    from cliff_lens.scoring import bucket_of

    out = []
    for r in batch:
        n_tok = len(r.thinking.split()) + 4
        rng = np.random.default_rng(bucket_of(r.id, 2**31))
        traj = np.clip(0.6 + 0.1 * rng.standard_normal(n_tok), 0, 1)
        traj[-4:] = np.linspace(traj[-5], rng.uniform(0, 0.6), 4)
        plateau = float(traj[max(0, n_tok - 36) : n_tok - 4].mean())
        final = float(traj[-1])
        out.append({"plateau": plateau, "final": final, "cliff": plateau - final, "n_tokens": n_tok})
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(pool: str, out: str, batch_size: int, mode: str) -> None:
    from cliff_lens.scoring import iter_pool, merge_scores, score_stream

    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    if mode == "score":
        st = score_stream(iter_pool(pool), synthetic_score_fn, out, batch_size=batch_size)
        n = st["scored"]
    else:
        n = merge_scores([pool], out)
    dt = time.perf_counter() - t0
    print(json.dumps({"n": n, "rss_after_import_mb": rss0, "peak_rss_mb": peak_rss_mb(), "wall_s": dt}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--child", nargs=4, metavar=("POOL", "OUT", "BATCH", "MODE"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in args.sizes:
            pool = Path(d) / f"pool_{n}.jsonl"
            size = write_pool(pool, n)
            res = {"pool_size": n, "pool_file_mb": size / 2**20}
            for mode in ("score", "merge"):
                src = pool if mode == "score" else Path(d) / f"scores_{n}.jsonl"
                out = Path(d) / (f"scores_{n}.jsonl" if mode == "score" else f"merged_{n}.jsonl")
                cmd = [sys.executable, __file__, "--child", str(src), str(out), str(args.batch_size), mode]
                r = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                res[mode] = r
            rows.append(res)
            print(
                f"pool {n:>7,} ({res['pool_file_mb']:.0f} MB): score peak RSS {res['score']['peak_rss_mb']:.0f} MB "
                f"(after imports {res['score']['rss_after_import_mb']:.0f} MB, {res['score']['wall_s']:.1f} s); "
                f"merge peak RSS {res['merge']['peak_rss_mb']:.0f} MB ({res['merge']['wall_s']:.1f} s)",
                flush=True,
            )
    result = {
        "benchmark": "bench_scoring_memory",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "batch_size": args.batch_size,
        "rows": rows,
    }
    out = Path(__file__).resolve().parent / "results" / "bench_scoring_memory.json"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cliff_lens.io import atomic_write_json

    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
