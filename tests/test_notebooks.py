"""CI executes the notebooks: 02 in its tiny mode (random model, synthetic rollouts), 01 on the
cliff organism with small sizes. A failing cell fails the test with the cell's error."""

from __future__ import annotations

from pathlib import Path

import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(path: Path, env: dict[str, str], timeout: int = 900) -> None:
    pytest.importorskip("nbclient")
    from cliff_lens.testing.notebooks import execute_notebook

    nb = execute_notebook(path, env, timeout=timeout)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("display_data", "execute_result") for o in outputs), (
        "no view rendered"
    )


def test_notebook_02_tiny_mode(tmp_path):
    _execute(NB_DIR / "02_your_reasoning_model.ipynb", {"CLIFF_LENS_TINY": "1"})


def test_notebook_01_tour():
    _execute(NB_DIR / "01_refusal_cliff_tour.ipynb", {"CLIFF_LENS_QUICK": "1"})
