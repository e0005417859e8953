"""CI executes the notebooks: 02 in its tiny mode (random model, synthetic rollouts), 01 on the
cliff organism with small sizes. A failing cell fails the test with the cell's error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(path: Path, env: dict[str, str], timeout: int = 900) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("display_data", "execute_result") for o in outputs), (
        "no view rendered"
    )


def test_notebook_02_tiny_mode(tmp_path):
    _execute(NB_DIR / "02_your_reasoning_model.ipynb", {"CLIFF_LENS_TINY": "1"})


def test_notebook_01_tour():
    _execute(NB_DIR / "01_refusal_cliff_tour.ipynb", {"CLIFF_LENS_QUICK": "1"})
