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
    for stage in pipeline.STAGES:
        for name in stage.outputs:
            assert (cfg.out / name).exists(), f"{stage.name} did not write {name}"
    state = json.loads((cfg.out / "run.json").read_text())
    assert all(state["stages"][s.name]["finished"] for s in pipeline.STAGES)


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


def test_rerun_skips_unchanged_stages(run_dir, caplog):
    cfg, _ = run_dir
    before = (cfg.out / "probe.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="cliff_lens"):
        pipeline.run(cfg)
    err = caplog.text
    assert err.count("up to date, skipped") == len(pipeline.STAGES)
    assert (cfg.out / "probe.safetensors").stat().st_mtime_ns == before


def test_changed_config_reruns_downstream_only(run_dir, caplog):
    cfg, _ = run_dir
    probe_before = (cfg.out / "probe.safetensors").read_bytes()
    cfg2 = pipeline.RunConfig(**{**cfg.__dict__, "selection_percent": 25.0})
    with caplog.at_level("INFO", logger="cliff_lens"):
        res = pipeline.run(cfg2)
    err = caplog.text
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


def test_every_stage_is_a_cli_subcommand_that_runs(run_dir, capsys):
    """Regression: `cliff-lens ablate DIR` and `select DIR` exited 2 with "unknown stage"."""
    from cliff_lens.cli import build_parser, main

    cfg, _ = run_dir
    parser = build_parser()
    for stage in pipeline.STAGES:
        assert parser.parse_args([stage.command, str(cfg.out)]).command == stage.command
    assert main(["select", str(cfg.out), "--force"]) == 0
    assert main(["ablate", str(cfg.out)]) == 0  # up to date: skipped, still exit 0
    assert "unknown stage" not in capsys.readouterr().err


def test_stage_command_on_a_non_run_directory_refuses_and_writes_nothing(tmp_path, capsys):
    """Regression: `cliff-lens report /etc` wrote /etc/report.html."""
    from cliff_lens.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    for command in ("report", "heads", "select"):
        assert main([command, str(tmp_path)]) == 2
        assert "not a run directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bad_settings_fail_before_any_compute(tmp_path, capsys):
    """Regression: `--top-percent 150` failed only at the heads stage, after rollouts and probe."""
    from cliff_lens.cli import main
    from cliff_lens.config import ConfigError

    out = tmp_path / "out"
    assert main(["run", "--model", "x", "--top-percent", "150", "--out", str(out)]) == 2
    assert "top percent 150 must be in (0, 100]" in capsys.readouterr().err
    assert not out.exists()
    for bad in (
        {"top_percents": (0.0,)},
        {"random_seeds": -1},
        {"n_ablation": 0},
        {"selection_percent": 101.0},
        {"ablation_mode": "zeroes"},
        {"judge_mode": "middle"},
        {"head_variant": "nope"},
        {"asr_prompts": "advbench"},
    ):
        with pytest.raises(ConfigError):
            pipeline.RunConfig(model="m", out=out, **bad)


def test_run_flags_are_generated_from_the_config(tmp_path):
    """Every RunConfig field is a `cliff-lens run` flag, and unset flags keep the field's default."""
    from dataclasses import fields

    from cliff_lens.cli import build_parser
    from cliff_lens.config import RunConfig, config_from_args

    args = build_parser().parse_args(
        ["run", "--model", "m", "--out", str(tmp_path), "--top-percent", "1,3", "--judge-mode", "anywhere"]
    )
    cfg = config_from_args(args)
    assert cfg.top_percents == (1.0, 3.0) and cfg.judge_mode == "anywhere"
    default = RunConfig(model="m", out=tmp_path)
    for f in fields(RunConfig):
        assert hasattr(args, f.name), f"no flag for RunConfig.{f.name}"
        if f.name not in ("top_percents", "judge_mode"):
            assert getattr(cfg, f.name) == getattr(default, f.name)


def test_results_and_summary_carry_intervals(run_dir):
    """Every rate and mean in results.json has a 95% interval; the CLI summary prints them."""
    cfg, results = run_dir
    d = results["data"]
    lo, hi = d["harmful_refusal_rate_ci95"]
    assert lo < d["harmful_refusal_rate"] < hi
    for g in ("harmful", "harmless"):
        b = results["cliff"][g]
        assert b["n_rollouts"] > 0 and len(b["cliff_ci95"]) == 2 and "cliff_share" in b
    assert results["cliff"]["scored_by"].startswith("out-of-sample")
    p = results["probe"]
    assert p["val_accuracy_ci95"][0] <= p["val_accuracy"] <= p["val_accuracy_ci95"][1]
    assert (cfg.out / "probe_folds.json").exists()
    top = next(a for a in results["ablation"] if a["setting"].startswith("top-"))
    assert len(top["asr_ci95"]) == 2 and "p_value" in top["vs_baseline"]["asr"]
    text = pipeline.summary(results, cfg.out)
    assert "McNemar p=" in text and "held-out acc" in text and "%, " in text
    assert f"[{100 * lo:.0f}%, {100 * hi:.0f}%]" in text
    assert f"({top['n_attack_success']}/{top['n_harmful']})" in text  # every rate with its n
    assert "scored out-of-sample" in text and "KL " in text


def test_ablation_reports_capability_cost(run_dir):
    """Every ablated setting carries the KL / answer log-likelihood cost on harmless rollouts."""
    cfg, results = run_dir
    ablated = [a for a in results["ablation"] if a.get("kind") in ("top", "random")]
    assert ablated
    for a in ablated:
        cap = a["capability"]
        assert cap["kl"]["value"] >= 0 and cap["n_rollouts"] > 0 and len(cap["kl"]["ci95"]) == 2
    assert "harmful_outcomes" not in ablated[0]  # per-prompt outcomes stay in ablation.json
    aj = json.loads((cfg.out / "ablation.json").read_text())
    assert any("harmful_outcomes" in r for r in aj["settings"])


def test_ablation_stage_judges_with_the_run_judge_mode(run_dir, monkeypatch):
    """Regression: _stage_ablation ignored RunConfig.judge_mode (attack_success used its default)."""
    from cliff_lens import evaluate

    cfg, _ = run_dir
    seen = {}
    real = evaluate.attack_success

    def spy(*a, **kw):
        seen["judge"] = kw.get("judge")
        return real(*a, **kw)

    monkeypatch.setattr(evaluate, "attack_success", spy)
    cfg2 = pipeline.RunConfig(**{**cfg.__dict__, "judge_mode": "anywhere"})
    pipeline.run(cfg2, stages=("labels", "probe", "heads", "ablation"))
    assert seen["judge"] is not None and seen["judge"].mode == "anywhere"
    pipeline.run(cfg)  # restore the module's run directory for the tests after this one


def test_markdown_table_shows_every_headline_with_its_interval(run_dir):
    from cliff_lens.summary import markdown_table

    _, results = run_dir
    table = markdown_table(results)
    assert table.startswith("| | value [95% CI] |")
    assert "ASR / over-refusal, baseline" in table and "McNemar p = " in table
    assert table.count("[") >= 6  # refusal rates, probe, cliff blocks, ASR rows carry intervals
    base = next(a for a in results["ablation"] if a["setting"] == "baseline")
    assert f"({base['n_attack_success']}/{base['n_harmful']}) [" in table  # every ASR with its n


def test_contrast_ranking_is_ablated_and_tested_against_the_paper_ranking(run_dir):
    cfg, results = run_dir
    rows = {a["setting"]: a for a in results["ablation"]}
    assert "top-25% contrast" in rows and results["heads"]["top_contrast"]
    row = rows["top-25% contrast"]
    assert row["vs_paper_ranking"]["paper_setting"] == "top-25%"
    assert 0 <= row["vs_paper_ranking"]["p_value"] <= 1
    assert row["vs_random"]["n_sets"] == cfg.random_seeds and "capability" in row


def test_raising_random_seeds_generates_only_the_new_sets(tmp_path, monkeypatch):
    """Raising ``random_seeds`` on a finished run re-runs the ablation stage on the settings it does
    not have yet; the result equals a fresh run with the higher number (every test recomputed)."""
    import dataclasses

    from cliff_lens import rollout

    model_dir = tiny_hf_model_dir(tmp_path / "tiny-model")
    pool = synthetic_rollouts(tmp_path / "pool.jsonl")
    small = dataclasses.replace(imported_run_config(model_dir, pool, tmp_path / "a"), random_seeds=1)
    pipeline.run(small)
    calls: list[int] = []  # rows per generation call
    real = rollout.generate_rollouts

    def counting(model, prompts, **kwargs):
        calls.append(len(prompts))
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(rollout, "generate_rollouts", counting)
    raised = pipeline.run(dataclasses.replace(small, random_seeds=3))
    meta = json.loads((tmp_path / "a" / "ablation.json").read_text())["meta"]
    n, n_harm = meta["n_harmful"] + meta["n_harmless"], meta["n_harmful"]  # rows of one setting
    # random seeds 1 and 2 of both nulls (uniform, layer-matched; harmful prompts only), side by
    # side in one call; baseline, the top-25% sets and seed 0 are reused
    assert calls == [4 * n_harm]
    fresh = pipeline.run(dataclasses.replace(small, random_seeds=3, out=tmp_path / "b"))
    # a fresh run generates all in one call: baseline (imported rollouts are not a baseline), the
    # held-out top-25% of both rankings, the in-sample top-25%, and 3 random sets of each null
    assert calls == [4 * n_harm, 4 * n + 6 * n_harm]
    strip = {"run_dir", "config", "timings", "versions"}
    assert {k: v for k, v in raised.items() if k not in strip} == {
        k: v for k, v in fresh.items() if k not in strip
    }
    summary = raised["ablation_random_summary"][0]
    assert summary["seeds"] == [0, 1, 2]


def test_summary_labels_in_sample_rows_and_shows_both_nulls_holm_and_within_set_lines(tmp_path):
    """The CLI summary of a held-out run: the in-sample row labelled, each top row's own
    layer-matched p (not the summary row's), the Holm p, head stability, the design and the
    within-prompt-set lines; a leaking run names its failing checks."""
    import json

    from cliff_lens.summary import summary
    from cliff_lens.testing import write_synthetic_run

    run = write_synthetic_run(tmp_path / "run")
    res = json.loads((run / "results.json").read_text())
    top = next(a for a in res["ablation"] if a["setting"] == "top-3%")
    top["vs_random_matched"]["asr_empirical_p"] = 0.333  # the row's own, unlike its summary's 1/6
    text = summary(res, run)
    lines = {ln.split("ASR")[0].strip(): ln for ln in text.splitlines() if ln.startswith("  ablation")}
    assert "ablation  top-3% (in-sample)" in lines and "ablation  top-3% in-sample" not in lines
    held = lines["ablation  top-3%"]
    assert "vs 5 layer-matched sets p=0.333 (Holm 0.500)" in held
    assert "vs 5 uniform random sets p=0.167 (Holm 0.500)" in held and "McNemar p=0.000 (Holm 0.000)" in held
    assert "(Holm" not in lines["ablation  top-3% (in-sample)"]  # not one of the run's findings
    assert "stability paper top heads kept in 20 request bootstraps: L1H2 0.95" in text
    assert "design    2/2 held-out checks disjoint" in text and "NOT DISJOINT" not in text
    assert "within    cliff-harmful     cliff complied 0.107 (n=3, no interval)" in text
    assert "vs framing-stratified baseline 0.797: exact p=0.282" in text
    leaky = write_synthetic_run(tmp_path / "leak", leak=True)
    text = summary(json.loads((leaky / "results.json").read_text()), leaky)
    assert "design    0/2 held-out checks disjoint" in text
    assert "NOT DISJOINT: head-means requests vs over-refusal requests: overlap synthetic-b08" in text
