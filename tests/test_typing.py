"""Run-time type checking of the suite (``--jaxtyping-packages=cliff_lens,beartype.beartype`` in
pytest's ``addopts``) and the ``Validated[X]`` marker of :mod:`cliff_lens._typing`."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

import jaxtyping
import pytest
import torch

from cliff_lens._typing import Validated, static_type_hints
from cliff_lens.config import RunConfig, _field_type, _parser_type
from cliff_lens.heads import DirectDecomposition, contrast_scores


def _decomposition(heads, attn_bias, mlp) -> DirectDecomposition:
    return DirectDecomposition(
        embed=0.0,
        pos_embed=0.0,
        heads=heads,
        attn_bias=attn_bias,
        mlp=mlp,
        total=0.0,
        resid_final=0.0,
        error=0.0,
        position=0,
    )


def test_jaxtyping_shapes_are_checked_at_run_time():
    """Fails when the suite runs without --jaxtyping-packages: every annotated function (here a
    dataclass ``__init__``) of cliff_lens checks its tensors' dtypes and named axes."""
    ok = _decomposition(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2))
    assert ok.heads.shape == (2, 4)
    with pytest.raises(jaxtyping.TypeCheckError, match="n_layers"):  # heads: 2 layers, attn_bias: 3
        _decomposition(torch.zeros(2, 4), torch.zeros(3), torch.zeros(2))
    with pytest.raises(jaxtyping.TypeCheckError):  # Float[...] rejects an integer tensor
        _decomposition(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2), torch.zeros(2))


def test_validated_arguments_keep_the_function_s_own_message():
    """A ``Validated`` parameter reaches the function's own check, whose message names the fix."""
    with pytest.raises(ValueError, match=r"\[n, n_layers, n_heads\]"):
        contrast_scores(torch.zeros(2, 4), [True, False])
    with pytest.raises(ValueError, match="refused\\[1\\]"):
        contrast_scores(torch.zeros(3, 2, 4), [True, "yes", False])


def test_validated_is_object_at_run_time_and_x_for_introspection():
    def f(x: Validated[int]) -> None: ...

    assert typing.get_type_hints(f)["x"] is object
    hints = static_type_hints(RunConfig)
    assert hints["out"] is Path
    assert typing.get_origin(hints["judge_mode"]) is Literal
    assert typing.get_type_hints(RunConfig)["out"] is object


def test_config_fields_are_introspected_as_mypy_reads_them():
    assert _field_type("out") is Path
    assert typing.get_args(_field_type("ablation_mode")) == (
        "zero",
        "mean",
        "paper_renorm",
        "paper_renorm_global",
    )
    assert _parser_type(_field_type("selection_percent")) is float  # float | int parses as a float
    assert _parser_type(_field_type("n_harmful")) is int
    cfg = RunConfig(model="m", out="run", selection_percent=25, cliff_threshold=1, top_percents=(3,))
    assert cfg.out == Path("run") and cfg.top_percents == (3.0,)
