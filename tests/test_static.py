"""Static checks run with the tests (so CI runs them): ruff lint and the mypy type checker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = _run([ruff, "check", "cliff_lens", "tests", "benchmarks", "scripts"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean_on_the_package():
    """`mypy` (configured in pyproject.toml: the cliff_lens package) reports no error."""
    out = _run([sys.executable, "-m", "mypy"])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
