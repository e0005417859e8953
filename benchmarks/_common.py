"""Shared helpers for the benchmark scripts (not a test module, not part of the package).

* :func:`machine_info`: CPU model, cores, torch / transformers / TransformerLens versions, device.
* :func:`interleaved`: wall times of several variants measured in interleaved rounds
  (A B C D, B C D A, ...: the order rotates), so that load drift on a shared machine hits every variant alike;
  medians and ratios come from the same rounds.
* :class:`RssSampler` / :func:`measure_in_subprocess`: peak resident memory of one variant,
  measured in a fresh process (a background thread samples ``/proc/self/statm``; on CUDA the
  allocator's peak is read instead).
* :func:`save_result`: atomic JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "smollm2-135m-instruct"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """A description of the machine and software a result came from."""
    import transformers

    try:
        from importlib.metadata import version

        tl = version("transformer-lens")
    except Exception:  # noqa: BLE001
        tl = "unknown"
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores_visible": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": tl,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "load_avg_at_start": os.getloadavg(),
        "shared_machine": True,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, *, device: str = "cpu", warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Run each function ``warmup + repeats`` times in interleaved rounds (the order rotates by one
    each round: A B C, B C A, C A B, ...); per-variant medians.

    Returns ``{name: {"median_s", "min_s", "times_s"}}``.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(warmup + repeats):
        # rotate the order every round so no variant always runs first (cold caches, allocator)
        for k in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[k]
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "times_s": [round(x, 4) for x in v]}
        for k, v in times.items()
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Context manager: the peak RSS (bytes) seen every ``interval`` s by a background thread,
    and the RSS at entry. ``.peak_delta`` = peak - entry."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_bytes()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *a) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def peak_delta(self) -> int:
        return self.peak - self.start


def measure_peak(fn: Callable[[], Any], device: str = "cpu") -> dict[str, float]:
    """Peak memory of one call: RSS delta over the call (CPU) or CUDA allocator peak delta."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"gpu_peak_delta_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    with RssSampler() as s:
        fn()
    return {"rss_peak_delta_mib": s.peak_delta / 2**20, "rss_peak_mib": s.peak / 2**20}


def measure_in_subprocess(script: Path, args: list[str], timeout: float = 1800) -> dict:
    """Run ``python script *args`` (which prints one JSON line prefixed ``MEM_JSON``) and parse it."""
    cmd = [sys.executable, str(script), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("MEM_JSON "):
            return json.loads(line[len("MEM_JSON ") :])
    return {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:] if p.stderr else ''}"}


def save_result(name: str, obj: dict, out: str | None = None) -> Path:
    """Write ``obj`` atomically to ``benchmarks/results/<name>.json`` (or ``out``)."""
    from cliff_lens.io import atomic_write_json

    path = Path(out) if out else RESULTS / f"{name}.json"
    atomic_write_json(path, obj)
    return path


def fmt_table(rows: list[dict], cols: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) restricted to ``cols``."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return "-" if v is None else str(v)

    data = [[cell(r.get(c)) for c in cols] for r in rows]
    w = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols))]
    lines.append("  ".join("-" * x for x in w))
    lines += ["  ".join(d[i].ljust(w[i]) for i in range(len(cols))) for d in data]
    return "\n".join(lines)


@contextmanager
def slow_forward():
    """TransformerLens's own forward everywhere while inside (cliff_lens speeds it up by default;
    see ``cliff_lens.fast_forward``): the before/after comparison of that optimisation."""
    old = os.environ.get("CLIFF_LENS_FAST_FORWARD")
    os.environ["CLIFF_LENS_FAST_FORWARD"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["CLIFF_LENS_FAST_FORWARD"]
        else:
            os.environ["CLIFF_LENS_FAST_FORWARD"] = old
