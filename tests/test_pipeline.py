"""The staged pipeline on a tiny random model with imported rollouts: every stage writes its
files, results.json validates, unchanged stages are skipped, another model's run dir is refused,
and a stage can be re-run alone."""

from __future__ import annotations

import json

import pytest
from conftest import imported_run_config

from cliff_lens import pipeline
from cliff_lens.testing import HARMFUL, HARMLESS, synthetic_rollouts, tiny_hf_model_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    model_dir = tiny_hf_model_dir(tmp / "tiny-model")
    cfg = imported_run_config(model_dir, synthetic_rollouts(tmp / "pool.jsonl"), tmp / "out")
    results = pipeline.run(cfg)
    return cfg, results


def test_every_stage_writes_its_files(run_dir):
    cfg, results = run_dir
    for stage, outputs in pipeline._STAGE_OUTPUTS.items():
        for name in outputs:
            assert (cfg.out / name).exists(), f"{stage} did not write {name}"
    state = json.loads((cfg.out / "run.json").read_text())
    assert all(state["stages"][s]["finished"] for s in pipeline.STAGES)


def test_results_content_and_schema(run_dir):
    from cliff_lens.results_schema import validate_results

    cfg, results = run_dir
    validate_results(results)
    assert results["model"]["n_layers"] == 2 and results["model"]["n_heads"] == 4
    assert results["data"]["n_harmful"] == len(HARMFUL) and results["data"]["n_harmless"] == len(HARMLESS)
    # 3 of 8 harmful answers comply (i % 3 == 0), judged on the answer only
    assert results["data"]["harmful_refusal_rate"] == pytest.approx(5 / 8)
    assert results["heads"]["n_heads_total"] == 8 and len(results["heads"]["top"]) == 2
    settings = [a["setting"] for a in results["ablation"]]
    assert settings[0] == "baseline" and any(s.startswith("top-25") for s in settings)
    assert results["selection"]["summary"]["n_pool"] == len(HARMFUL)
    assert set(results["timings"]) >= {"rollouts", "probe", "heads"}


def test_rerun_skips_unchanged_stages(run_dir, capsys):
    cfg, _ = run_dir
    before = (cfg.out / "probe.safetensors").stat().st_mtime_ns
    pipeline.run(cfg)
    err = capsys.readouterr().err
    assert err.count("up to date, skipped") == len(pipeline.STAGES)
    assert (cfg.out / "probe.safetensors").stat().st_mtime_ns == before


def test_changed_config_reruns_downstream_only(run_dir, capsys):
    cfg, _ = run_dir
    probe_before = (cfg.out / "probe.safetensors").read_bytes()
    cfg2 = pipeline.RunConfig(**{**cfg.__dict__, "selection_percent": 25.0})
    res = pipeline.run(cfg2)
    err = capsys.readouterr().err
    assert "selection ..." in err and "probe: up to date" in err
    assert (cfg.out / "probe.safetensors").read_bytes() == probe_before
    assert res["selection"]["summary"]["n_selected"] == 2


def test_run_dir_of_another_model_is_refused(run_dir):
    cfg, _ = run_dir
    other = pipeline.RunConfig(**{**cfg.__dict__, "model": "some/other-model"})
    with pytest.raises(pipeline.RunDirError, match="holds a run of model"):
        pipeline.run(other)


def test_single_stage_rerun_and_missing_input(run_dir, tmp_path):
    cfg, _ = run_dir
    res = pipeline.run_stage(cfg.out, "selection")
    assert res["selection"]["summary"]["n_pool"] == len(HARMFUL)
    with pytest.raises(pipeline.RunDirError, match="not a run directory"):
        pipeline.run_stage(tmp_path, "heads")


def test_cli_score_shards_and_merge_equal_single_run(run_dir, tmp_path):
    from cliff_lens.cli import main
    from cliff_lens.io import iter_jsonl

    cfg, _ = run_dir
    common = [
        "--model",
        cfg.model,
        "--probe",
        str(cfg.out / "probe"),
        "--rollouts",
        str(cfg.out / "rollouts.jsonl"),
    ]
    assert main(["score", *common, "--out", str(tmp_path / "all.jsonl")]) == 0
    for i in range(2):
        assert main(["score", *common, "--out", str(tmp_path / f"s{i}.jsonl"), "--shard", f"{i}/2"]) == 0
    assert (
        main(
            [
                "merge",
                str(tmp_path / "s0.jsonl"),
                str(tmp_path / "s1.jsonl"),
                "--out",
                str(tmp_path / "m.jsonl"),
            ]
        )
        == 0
    )
    assert main(["merge", str(tmp_path / "all.jsonl"), "--out", str(tmp_path / "single.jsonl")]) == 0
    merged = list(iter_jsonl(tmp_path / "m.jsonl"))
    assert merged == list(iter_jsonl(tmp_path / "single.jsonl"))
    assert len(merged) == len(HARMFUL) + len(HARMLESS)


def test_cli_reports_bad_input_without_traceback(run_dir, capsys):
    from cliff_lens.cli import main

    cfg, _ = run_dir
    assert (
        main(
            ["score", "--model", cfg.model, "--probe", str(cfg.out / "nope"), "--rollouts", "x", "--out", "y"]
        )
        == 2
    )
    assert "error:" in capsys.readouterr().err
