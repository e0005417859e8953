"""Pool scoring: exact metrics, shard + merge == single run, resume == uninterrupted, bad inputs."""

from __future__ import annotations

import random

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from cliff_lens.io import iter_jsonl, write_jsonl
from cliff_lens.probe import RefusalProbe
from cliff_lens.scoring import (
    ScoringError,
    merge_scores,
    parse_shard,
    score_pool,
    score_stream,
    shard_of,
)
from cliff_lens.templates import get_template
from cliff_lens.testing import TINY_WORDS, build_tiny_tokenizer

WORDS = [w for w in TINY_WORDS if w and w != "\n"]


@pytest.fixture(scope="module")
def model():
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=1000, n_ctx=256,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
        gated_mlp=True, final_rms=True, seed=0, device="cpu", model_name="tiny-model",
    )  # fmt: skip
    torch.manual_seed(0)
    m = HookedTransformer(cfg)
    m.eval()
    m.tokenizer = build_tiny_tokenizer(1000)
    return m


@pytest.fixture(scope="module")
def probe():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(32, generator=g)
    return RefusalProbe(d, bias=0.1, scale=2.0, hook="blocks.{L}.hook_resid_post", layer=1,
                        meta={"model_name": "tiny-model"})  # fmt: skip


def _pool(n: int, seed: int = 0, model_name: str = "tiny-model") -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "id": f"r{i:04d}",
                "prompt": " ".join(rng.choices(WORDS, k=rng.randint(3, 8))),
                "thinking": " ".join(rng.choices(WORDS, k=rng.randint(2, 20))),
                "answer": "sure here",
                "harmful": True,
                "meta": {"model": model_name},
            }
        )
    return out


def test_scores_equal_direct_forward(tmp_path, model, probe):
    pool = _pool(7)
    write_jsonl(tmp_path / "pool.jsonl", pool)
    score_pool(model, probe, tmp_path / "pool.jsonl", tmp_path / "s.jsonl", batch_size=3, progress=False)
    got = {r["id"]: r for r in iter_jsonl(tmp_path / "s.jsonl")}
    assert sorted(got) == [r["id"] for r in pool]
    tpl = get_template("generic")
    for r in pool:  # one at a time, no padding, full cache
        tr = tpl.tokenize(model.tokenizer, r["prompt"], r["thinking"], "", include_answer=False).truncate()
        _, cache = model.run_with_cache(tr.tokens[None], names_filter="blocks.1.hook_resid_post")
        s = probe.score(cache["blocks.1.hook_resid_post"][0])
        ts, te = tr.spans["thinking"]
        assert got[r["id"]]["plateau"] == pytest.approx(float(s[ts:te].mean()), abs=1e-5)
        assert got[r["id"]]["final"] == pytest.approx(float(s[tr.spans["end_of_thinking"][1] - 1]), abs=1e-5)
        assert got[r["id"]]["harmful"] is True


def test_shards_plus_merge_equal_single_run(tmp_path, model, probe):
    pool = _pool(30, seed=1)
    write_jsonl(tmp_path / "pool.jsonl", pool)
    kw = dict(batch_size=4, n_buckets=8, progress=False)
    score_pool(model, probe, tmp_path / "pool.jsonl", tmp_path / "all.jsonl", **kw)
    s0 = score_pool(model, probe, tmp_path / "pool.jsonl", tmp_path / "s0.jsonl", shard="0/2", **kw)
    s1 = score_pool(model, probe, tmp_path / "pool.jsonl", tmp_path / "s1.jsonl", shard=(1, 2), **kw)
    assert s0["scored"] + s1["scored"] == 30 and s0["scored"] > 0 and s1["scored"] > 0
    ids0 = {r["id"] for r in iter_jsonl(tmp_path / "s0.jsonl")}
    assert all(shard_of(i, 2, 8) == 0 for i in ids0)
    assert merge_scores([tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"], tmp_path / "m.jsonl") == 30
    merge_scores([tmp_path / "all.jsonl"], tmp_path / "single.jsonl")
    assert (tmp_path / "m.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    ids = [r["id"] for r in iter_jsonl(tmp_path / "m.jsonl")]
    assert ids == sorted(ids)


def test_resume_after_crash_equals_uninterrupted(tmp_path, model, probe):
    pool = _pool(25, seed=2)
    write_jsonl(tmp_path / "pool.jsonl", pool)
    kw = dict(batch_size=3, n_buckets=4, progress=False)
    score_pool(model, probe, tmp_path / "pool.jsonl", tmp_path / "full.jsonl", **kw)
    full = (tmp_path / "full.jsonl").read_bytes()
    lines = full.splitlines(keepends=True)
    # a crash: 10 whole lines written, the 11th cut in the middle
    (tmp_path / "part.jsonl").write_bytes(b"".join(lines[:10]) + lines[10][: len(lines[10]) // 2])
    with pytest.warns(UserWarning, match="truncated last line"):
        st = score_pool(model, probe, tmp_path / "pool.jsonl", tmp_path / "part.jsonl", **kw)
    assert st["resumed_with"] == 10 and st["scored"] == 15
    merge_scores([tmp_path / "full.jsonl"], tmp_path / "a.jsonl")
    merge_scores([tmp_path / "part.jsonl"], tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # a finished run re-run writes nothing
    st2 = score_pool(model, probe, tmp_path / "pool.jsonl", tmp_path / "part.jsonl", **kw)
    assert st2["scored"] == 0 and st2["skipped_done"] == 25


def test_batches_do_not_depend_on_shard_count():
    seen: list[list[str]] = []

    def fn(batch):
        seen.append(sorted(r["id"] for r in batch))
        return [{"plateau": 0.5, "final": 0.1} for _ in batch]

    import tempfile
    from pathlib import Path

    pool = _pool(50, seed=3)
    with tempfile.TemporaryDirectory() as d:
        score_stream(iter(pool), fn, Path(d) / "a.jsonl", batch_size=4, n_buckets=8)
        single = sorted(seen)
        seen.clear()
        for i in range(4):
            score_stream(iter(pool), fn, Path(d) / f"s{i}.jsonl", shard=(i, 4), batch_size=4, n_buckets=8)
        assert sorted(seen) == single


def test_bad_inputs(tmp_path, model, probe):
    p = tmp_path / "pool.jsonl"
    no_thinking = _pool(4)
    for r in no_thinking:
        r["thinking"] = None
    write_jsonl(p, no_thinking)
    with pytest.raises(ScoringError, match="has no thinking"):
        score_pool(model, probe, p, tmp_path / "o.jsonl", progress=False)
    with pytest.raises(ScoringError, match="no rollout of shard 0/1 has thinking"):
        score_pool(model, probe, p, tmp_path / "o.jsonl", progress=False, on_missing_thinking="skip")
    write_jsonl(p, _pool(4, model_name="other/big-model"))
    with pytest.raises(
        ScoringError, match="generated by 'other/big-model' but the probe was trained on 'tiny-model'"
    ):
        score_pool(model, probe, p, tmp_path / "o.jsonl", progress=False)
    score_pool(model, probe, p, tmp_path / "o2.jsonl", progress=False, check_model=False)  # explicit opt-out
    write_jsonl(p, [])
    with pytest.raises(ScoringError, match="pool is empty"):
        score_pool(model, probe, p, tmp_path / "o3.jsonl", progress=False)
    write_jsonl(p, _pool(2) + _pool(1))
    with pytest.raises(ScoringError, match="duplicate rollout id 'r0000'"):
        score_pool(model, probe, p, tmp_path / "o4.jsonl", progress=False)
    from cliff_lens.scoring import shard_from_env

    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "8"}) == (2, 8)
    assert shard_from_env({}) == (0, 1)
    for bad in ("2/2", "a/b", "1", (0, 0)):
        with pytest.raises(ScoringError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ScoringError, match="exceeds n_buckets"):
        score_stream([], lambda b: [], tmp_path / "x.jsonl", shard="0/100", n_buckets=64)
    write_jsonl(tmp_path / "c1.jsonl", [{"id": "a", "plateau": 0.5, "final": 0.1}])
    write_jsonl(tmp_path / "c2.jsonl", [{"id": "a", "plateau": 0.5, "final": 0.2}])
    with pytest.raises(ScoringError, match="different scores"):
        merge_scores([tmp_path / "c1.jsonl", tmp_path / "c2.jsonl"], tmp_path / "m.jsonl")
