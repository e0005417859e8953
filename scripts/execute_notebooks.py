"""Execute the notebooks in place and keep their outputs, so that they render when browsed.

    python scripts/execute_notebooks.py            # 01 on the cliff organism (full size, CPU)
                                                   # 02 in its tiny mode (no GPU, no download)

01 runs at its full size (16 prompts per group); 02 runs in ``CLIFF_LENS_TINY=1`` mode, because
its real model (an R1 distill) needs a download and a GPU: its committed outputs say so in their
first lines. CI executes both again (``tests/test_notebooks.py``) without writing them back.
Execution timestamps are dropped so that a re-run only changes what the notebook computed, and
so are stderr chunks that only redraw a progress bar (``\\r...`` without a line) or say that
ipywidgets is missing: the outputs hold results, not redraws.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat

from cliff_lens.testing.notebooks import execute_notebook

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
#: notebook -> the environment it is executed with for its committed outputs
MODES = {
    "01_refusal_cliff_tour.ipynb": {},
    "02_your_reasoning_model.ipynb": {"CLIFF_LENS_TINY": "1"},
}


def _is_noise(output: dict) -> bool:
    """A stderr chunk that is blank, only redraws a progress bar (a ``\\r`` line), or is tqdm's
    note that ipywidgets is missing."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    text = output.get("text", "")
    redraw = "\r" in text and "\n" not in text.strip("\r\n")
    return not text.strip() or redraw or "IProgress not found" in text


def execute(path: Path, env: dict[str, str]) -> float:
    """Execute ``path`` in place with ``env`` set; returns the wall time in seconds."""
    t0 = time.perf_counter()
    nb = execute_notebook(path, env)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not _is_noise(o)]
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(MODES), help="notebooks to execute (default: all)")
    args = ap.parse_args()
    for name in args.names:
        seconds = execute(NB_DIR / name, MODES[name])
        print(f"{name}: executed in {seconds:.0f} s")


if __name__ == "__main__":
    main()
