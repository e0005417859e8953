"""Executing the repository's notebooks: shared by ``tests/test_notebooks.py`` (CI) and
``scripts/execute_notebooks.py`` (which writes the outputs back).

Needs the ``dev`` extra (``nbclient``, ``nbformat``, ``ipykernel``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["execute_notebook", "MODE_VARIABLES"]

#: the environment variables that choose a notebook's size (unset unless a mode sets them)
MODE_VARIABLES = ("CLIFF_LENS_TINY", "CLIFF_LENS_QUICK")


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with :data:`MODE_VARIABLES` cleared and ``env`` set, restored on exit."""
    old = {k: os.environ.get(k) for k in (*MODE_VARIABLES, *env)}
    for k in MODE_VARIABLES:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def execute_notebook(path: str | os.PathLike, env: dict[str, str] | None = None, timeout: int = 3600) -> Any:
    """Execute the notebook at ``path`` (its kernel sees ``env``; the mode variables are otherwise
    unset) and return the executed ``nbformat`` notebook; the file is not written. A failing cell
    raises ``nbclient``'s ``CellExecutionError`` with the cell's error."""
    import nbclient
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    with _environment(env or {}):
        nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    return nb
