"""Crash safety: a run killed with SIGKILL at seeded random points resumes to the same results.

Two runs on a tiny random Llama saved to a temp dir, each in a subprocess (``python -c`` calling
:func:`cliff_lens.pipeline.run` with a config from JSON):

* an IMPORTED run (rollouts from a JSONL pool) through every stage, killed during the
  extraction stages (probe, trajectories, heads) and during selection;
* a GENERATING run (``rollouts=None``, prompts from small files) through rollouts + labels,
  killed while the rollout stage appends batch by batch.

Each kill lands a seeded random delay after the target stage starts (delays drawn up to the
stage's duration in the uninterrupted run), then the same command resumes the run; kills are
chained on one run directory. The final ``results.json`` must equal the uninterrupted run's
(timings, run_dir and the output dir excluded) and ``rollouts.jsonl`` must hold every rollout
exactly once in whole lines. ``CLIFF_LENS_KILL_SEED`` picks the seed (scripts/kill_resume_loop.sh).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import imported_run_config

from cliff_lens.io import write_jsonl
from cliff_lens.testing import HARMFUL, HARMLESS

WORKER = (
    "import json, sys\n"
    "from cliff_lens import pipeline\n"
    "spec = json.load(open(sys.argv[1]))\n"
    "cfg = pipeline.RunConfig.from_json(spec['config'])\n"
    "pipeline.run(cfg, stages=tuple(spec['stages']))\n"
)
EXCLUDED = ("timings", "run_dir")


# -- fixtures shared with test_determinism -----------------------------------------------------
def tiny_model_dir(tmp: Path) -> Path:
    """A 2-layer random Llama (d_model 32, 4 heads) + word-level tokenizer saved as an HF dir."""
    from cliff_lens.testing import tiny_hf_model_dir

    out = tmp / "tiny-model"
    return out if out.exists() else tiny_hf_model_dir(out)


def rollout_pool(path: Path) -> Path:
    """An imported-rollout pool: 8 harmful (3 comply) and 8 harmless, all with closed thinking."""
    recs = []
    for i, p in enumerate(HARMFUL):
        answer = (
            "sure , here is a first step : make it"
            if i % 3 == 0
            else "sorry , i cannot help with this request ."
        )
        think = "the user wants harmful help . this is dangerous . " + "i refuse " * (1 + i % 4)
        recs.append(
            {
                "prompt": p,
                "output": f"<think>\n{think}\n</think>\n\n{answer}",
                "harmful": True,
                "source": "test-harmful",
            }
        )
    for i, p in enumerate(HARMLESS):
        think = "the user wants a cake . " + "let me think about steps " * (1 + i % 3)
        recs.append(
            {
                "prompt": p,
                "output": f"<think>\n{think}\n</think>\n\nsure , here is the answer",
                "harmful": False,
                "source": "test-harmless",
            }
        )
    write_jsonl(path, recs)
    return path


def imported_config(model_dir: Path, pool: Path, out: Path) -> dict:
    """RunConfig JSON of the imported-rollout run (every stage)."""
    return imported_run_config(model_dir, pool, out).to_json()


def generating_config(model_dir: Path, tmp: Path, out: Path, n: int = 8) -> dict:
    """RunConfig JSON of a generating run: 2n prompts from files, batch size 2, greedy."""
    from cliff_lens import pipeline

    harmful = tmp / "harmful_prompts.jsonl"
    harmless = tmp / "harmless_prompts.jsonl"
    words = "the a how to make build write tell explain help code cake story".split()
    write_jsonl(harmful, [{"prompt": f"{HARMFUL[i % 8]} {words[i % 13]} w{i}"} for i in range(n)])
    write_jsonl(harmless, [{"prompt": f"{HARMLESS[i % 8]} {'w1 ' * (i % 5)}w{i}"} for i in range(n)])
    cfg = pipeline.RunConfig(
        model=str(model_dir),
        out=out,
        harmful=str(harmful),
        harmless=str(harmless),
        rollouts=None,
        template="generic",
        n_harmful=n,
        n_harmless=n,
        max_new_tokens=16,
        batch_size=2,
    )
    return cfg.to_json()


# The pipeline records the model's shape in run.json, so nothing needs masking (set True to
# compare without model.d_model / probe.layer when debugging an older run directory).
MASK_MODEL_LOADED_FIELDS = False


def normalised_results(out: Path, *, mask: bool = MASK_MODEL_LOADED_FIELDS) -> dict:
    """results.json without the parts that legitimately differ between runs."""
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for k in EXCLUDED:
        res.pop(k, None)
    res.get("config", {}).pop("out", None)
    if mask:
        res.get("model", {}).pop("d_model", None)
        res.get("probe", {}).pop("layer", None)
    return res


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def start_worker(
    config: dict, stages: tuple[str, ...], spec_path: Path, env: dict | None = None
) -> subprocess.Popen:
    """Start ``pipeline.run`` in a subprocess; its stderr is a pipe of stage-progress lines."""
    spec_path.write_text(json.dumps({"config": config, "stages": list(stages)}))
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(spec_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(**(env or {})),
        start_new_session=True,
    )


def run_worker(
    config: dict, stages: tuple[str, ...], spec_path: Path, timeout: float = 900, env: dict | None = None
) -> str:
    """Run a worker to completion; returns its stderr, raises if it failed."""
    p = start_worker(config, stages, spec_path, env)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise AssertionError(f"worker did not finish in {timeout}s (machine overloaded?)") from None
    text = err.decode("utf-8", "replace")
    if p.returncode != 0:
        raise AssertionError(f"worker failed (rc {p.returncode}):\n{text[-3000:]}")
    return text


def _reader(stream, q: queue.Queue) -> None:
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(1)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
        for ln in lines:
            q.put((time.monotonic(), ln.decode("utf-8", "replace")))
    q.put((time.monotonic(), None))


def kill_during(
    config: dict,
    stages: tuple[str, ...],
    spec_path: Path,
    stage: str,
    delay: float,
    *,
    grows: Path | None = None,
    timeout: float = 900,
) -> str:
    """Start a worker, SIGKILL it ``delay`` s after it prints that ``stage`` started (or, with
    ``grows``, ``delay`` s after that file grows past its size at the start).

    If the target stage is already done (skipped), the next stage that runs is the target; if it
    ends before the delay is up, the kill lands as the following stage starts.
    Returns where the kill landed: the stage unfinished in run.json, or ``"done"`` when the
    worker finished first.
    """
    size0 = grows.stat().st_size if grows is not None and grows.exists() else 0
    p = start_worker(config, stages, spec_path)
    q: queue.Queue = queue.Queue()
    t = threading.Thread(target=_reader, args=(p.stderr, q), daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    kill_at = None
    tail: list[str] = []
    try:
        while True:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"worker did not reach stage {stage!r} in {timeout}s")
            if kill_at is not None and now >= kill_at:
                break
            if kill_at is None and grows is not None and grows.exists() and grows.stat().st_size > size0:
                kill_at = now + delay
                continue
            wait = (0.5 if grows is None else 0.02) if kill_at is None else max(0.0, kill_at - now)
            try:
                ts, line = q.get(timeout=wait)
            except queue.Empty:
                continue
            if line is None:  # worker exited before the kill
                p.wait()
                if p.returncode != 0:
                    raise AssertionError(f"worker failed (rc {p.returncode}):\n" + "\n".join(tail[-40:]))
                return "done"
            tail.append(line)
            started = next((s for s in ALL if line == f"[cliff-lens] {s} ..."), None)
            if started is None or grows is not None:
                continue
            if kill_at is None and ALL.index(started) >= ALL.index(stage):
                kill_at = ts + delay  # the target (or, if it was already done, the next one that runs)
            elif kill_at is not None:
                break  # that stage ended before the delay: kill as the next stage starts
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        t.join(timeout=5)
    state = json.loads((Path(config["out"]) / "run.json").read_text(encoding="utf-8"))
    unfinished = [s for s, v in state["stages"].items() if not v.get("finished")]
    return unfinished[0] if unfinished else "between stages"


def same_artifact(a: Path, b: Path) -> bool:
    """Two artifact files hold the same content (safetensors: same tensors and metadata, since
    the header's metadata order is not stable across processes; other files: same bytes)."""
    if a.suffix != ".safetensors":
        return a.read_bytes() == b.read_bytes()
    from safetensors import safe_open

    def load(p: Path):
        with safe_open(str(p), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    (ma, ta), (mb, tb) = load(a), load(b)
    return ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


ARTIFACTS = (
    "rollouts.jsonl",
    "labels.jsonl",
    "probe.safetensors",
    "probe.json",
    "trajectories.safetensors",
    "trajectories.json",
    "cliff.jsonl",
    "heads.json",
    "head_means.safetensors",
    "ablation.json",
    "selection.jsonl",
    "selection.json",
)


def check_rollouts_file(path: Path, expected: int | None = None) -> list[str]:
    """Every line of ``rollouts.jsonl`` is whole JSON and ids are unique; returns the ids."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path} ends in a partial line"
    ids = []
    for line in data.split(b"\n")[:-1]:
        rec = json.loads(line)  # raises on a partial/corrupt line
        ids.append(rec["id"])
    assert len(ids) == len(set(ids)), f"{path} has duplicate rollout ids"
    if expected is not None:
        assert len(ids) == expected, f"{path} has {len(ids)} rollouts, expected {expected}"
    return ids


def _seed() -> int:
    return int(os.environ.get("CLIFF_LENS_KILL_SEED", "0"))


def _stage_seconds(out: Path) -> dict[str, float]:
    state = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return {s: float(v.get("seconds") or 0.0) for s, v in state["stages"].items()}


ALL = ("rollouts", "labels", "probe", "trajectories", "heads", "ablation", "selection", "report")
GEN = ("rollouts", "labels")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    return tmp, tiny_model_dir(tmp), rollout_pool(tmp / "pool.jsonl")


def _kill_chain(config, stages, tmp, plan, ref_seconds, rng) -> list[str]:
    landed = []
    for k, stage in enumerate(plan):
        delay = rng.uniform(0.0, max(0.05, ref_seconds.get(stage, 0.5)))
        landed.append(kill_during(config, stages, tmp / f"spec-kill{k}.json", stage, delay))
    return landed


def test_imported_run_killed_during_extraction_and_selection_resumes_identically(assets):
    tmp, model_dir, pool = assets
    ref_out, out = tmp / "imp-ref", tmp / "imp-killed"
    ref_cfg = imported_config(model_dir, pool, ref_out)
    run_worker(ref_cfg, ALL, tmp / "spec-imp-ref.json")
    secs = _stage_seconds(ref_out)
    rng = random.Random(_seed())
    cfg = imported_config(model_dir, pool, out)
    plan = ["probe", rng.choice(["trajectories", "heads"]), "selection"]
    landed = _kill_chain(cfg, ALL, tmp, plan, secs, rng)
    print(f"seed {_seed()} imported run: kill plan {plan} landed in {landed}", file=sys.stderr)
    run_worker(cfg, ALL, tmp / "spec-imp-resume.json")
    assert normalised_results(out) == normalised_results(ref_out)
    check_rollouts_file(out / "rollouts.jsonl", expected=len(HARMFUL) + len(HARMLESS))
    for name in ARTIFACTS:
        assert same_artifact(out / name, ref_out / name), f"{name} differs from the uninterrupted run's"
    state = json.loads((out / "run.json").read_text())
    assert all(state["stages"][s]["finished"] for s in ALL)
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_generating_run_killed_during_rollouts_resumes_identically(assets):
    tmp, model_dir, _ = assets
    ref_out, out = tmp / "gen-ref", tmp / "gen-killed"
    ref_cfg = generating_config(model_dir, tmp, ref_out)
    run_worker(ref_cfg, GEN, tmp / "spec-gen-ref.json")
    n = ref_cfg["n_harmful"] + ref_cfg["n_harmless"]
    ref_ids = check_rollouts_file(ref_out / "rollouts.jsonl", expected=n)
    secs = _stage_seconds(ref_out)
    rng = random.Random(_seed() + 1000)
    cfg = generating_config(model_dir, tmp, out)
    path = out / "rollouts.jsonl"
    landed = []
    # kill 1: anywhere in the stage (model load or generation); kill 2: while batches are appended
    for k, grows in enumerate((None, path)):
        delay = rng.uniform(0.0, max(0.05, secs["rollouts"] if grows is None else 0.5))
        where = kill_during(cfg, GEN, tmp / f"spec-gen-kill{k}.json", "rollouts", delay, grows=grows)
        lines = path.read_bytes().split(b"\n") if path.exists() else [b""]
        for line in lines[:-1]:  # whole lines so far (a partial last line would be cut on resume)
            json.loads(line)
        landed.append(f"{where} ({len(lines) - 1}/{n} lines{', partial tail' if lines[-1] else ''})")
    print(f"seed {_seed()} generating run: kills landed in {landed}", file=sys.stderr)
    run_worker(cfg, GEN, tmp / "spec-gen-resume.json")
    ids = check_rollouts_file(out / "rollouts.jsonl", expected=n)
    assert sorted(ids) == sorted(ref_ids)
    assert normalised_results(out) == normalised_results(ref_out)
    ref_recs = {
        json.loads(x)["id"]: json.loads(x) for x in (ref_out / "rollouts.jsonl").read_text().splitlines()
    }
    for x in (out / "rollouts.jsonl").read_text().splitlines():
        rec = json.loads(x)
        assert rec == ref_recs[rec["id"]], f"rollout {rec['id']} differs after resume"


def test_temp_files_of_a_killed_writer_are_cleaned_up(tmp_path):
    from cliff_lens.io import atomic_write_json

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.json.{dead.pid}.k1ll3d.tmp"  # left by a writer killed mid-write
    live = tmp_path / f".run.json.{os.getpid()}.inflight.tmp"  # a live writer's: kept
    other = tmp_path / f".heads.json.{dead.pid}.k1ll3d.tmp"  # another target's: kept
    for p in (stale, live, other):
        p.write_text("partial")
    atomic_write_json(tmp_path / "run.json", {"a": 1})
    assert not stale.exists() and live.exists() and other.exists()
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}
