"""Safe artifacts: nothing cliff_lens writes or reads can run code when opened.

* no pickle anywhere in the package (no ``pickle``/``joblib``/``dill``, no ``np.save``/``np.load``
  with pickles, every ``torch.load`` passes ``weights_only=True``);
* ``trust_remote_code`` is never on by default or hard-wired on;
* probes, head means and trajectories are safetensors + JSON files (checked by magic bytes);
* the HTML report escapes user text and loads nothing from the network.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pytest
import torch

import cliff_lens

PKG = Path(cliff_lens.__file__).resolve().parent
SOURCES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value
    return None


def test_sources_were_found():
    assert len(SOURCES) > 20 and PKG / "io.py" in SOURCES


def test_no_pickle_modules_are_imported():
    bad = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                if n.split(".")[0] in (
                    "pickle",
                    "cPickle",
                    "dill",
                    "joblib",
                    "cloudpickle",
                    "shelve",
                    "marshal",
                ):
                    bad.append(f"{p.relative_to(PKG)}:{node.lineno}: imports {n}")
    assert not bad, "pickle-based serialisation in the package:\n" + "\n".join(bad)


def test_no_unsafe_load_or_save_calls():
    bad = []
    for p in SOURCES:
        rel = p.relative_to(PKG)
        for node, owner, name in _calls(ast.parse(p.read_text(encoding="utf-8"))):
            where = f"{rel}:{node.lineno}"
            if owner == "torch" and name == "load":
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    bad.append(f"{where}: torch.load without weights_only=True")
            if owner == "torch" and name == "save":
                bad.append(f"{where}: torch.save (pickle); use io.atomic_save_safetensors")
            if owner in ("np", "numpy") and name in ("save", "savez", "savez_compressed"):
                bad.append(f"{where}: np.{name} (may pickle); use safetensors")
            if owner in ("np", "numpy") and name == "load":
                ap = _kw(node, "allow_pickle")
                if ap is None or not (isinstance(ap, ast.Constant) and ap.value is False):
                    bad.append(f"{where}: np.load without allow_pickle=False")
            if name in ("read_pickle", "to_pickle"):
                bad.append(f"{where}: pandas pickle")
    assert not bad, "\n".join(bad)


def test_trust_remote_code_is_off_unless_asked():
    bad = []
    for p in SOURCES:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        rel = p.relative_to(PKG)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                defaults += list(node.args.kw_defaults)
                for a, d in zip(args, defaults):
                    required = d is None  # must be passed explicitly: fine
                    if (
                        a.arg == "trust_remote_code"
                        and not required
                        and not (isinstance(d, ast.Constant) and d.value is False)
                    ):
                        bad.append(
                            f"{rel}:{node.lineno}: {node.name}(trust_remote_code=...) default is not False"
                        )
        for node, _, _ in _calls(tree):
            v = _kw(node, "trust_remote_code")
            if isinstance(v, ast.Constant) and v.value is True:
                bad.append(f"{rel}:{node.lineno}: trust_remote_code=True hard-wired")
    assert not bad, "\n".join(bad)
    from cliff_lens.models import load_hf, load_model

    for fn in (load_model, load_hf):
        p = inspect.signature(fn).parameters.get("trust_remote_code")
        assert p is None or p.default is False, f"{fn.__name__} defaults trust_remote_code to {p.default}"


def _is_safetensors(p: Path) -> bool:
    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return isinstance(header, dict) and 8 + n <= len(data)


def _is_json(p: Path) -> bool:
    json.loads(p.read_text(encoding="utf-8"))
    return True


def _not_pickle(p: Path) -> bool:
    head = p.read_bytes()[:4]
    return not (head[:1] == b"\x80" or head[:2] == b"PK")  # pickle protocol 2+ / torch zip


def test_probe_means_and_trajectories_are_safetensors_plus_json(tmp_path):
    from cliff_lens.ablation import save_head_means
    from cliff_lens.probe import RefusalProbe
    from cliff_lens.trajectory import Trajectory, save_trajectories

    torch.manual_seed(0)
    x = torch.randn(20, 8)
    y = [0, 1] * 10
    RefusalProbe.fit(x + torch.tensor(y)[:, None] * 2.0, y).save(tmp_path / "probe")
    save_head_means(tmp_path / "head_means", torch.randn(2, 4, 8))
    save_trajectories(
        tmp_path / "trajectories",
        [
            Trajectory(
                scores=torch.rand(6),
                spans={"prompt": (0, 2), "thinking": (2, 4), "end_of_thinking": (4, 6)},
                tokens=torch.arange(6),
                layers=[1],
                mode="single",
                id="r0",
            )
        ],
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "head_means.json",
        "head_means.safetensors",
        "probe.json",
        "probe.safetensors",
        "trajectories.json",
        "trajectories.safetensors",
    ]
    for p in tmp_path.iterdir():
        assert _not_pickle(p), p
        assert _is_safetensors(p) if p.suffix == ".safetensors" else _is_json(p), p


def test_report_escapes_user_text_and_loads_nothing(tmp_path):
    from cliff_lens.testing import PLANTED_SCRIPT, write_synthetic_run
    from cliff_lens.viz.report import build_report

    d = write_synthetic_run(tmp_path / "run")
    page = Path(build_report(d)).read_text(encoding="utf-8")
    assert PLANTED_SCRIPT not in page and "<b/id=" not in page
    assert "<script>document.title" not in page  # the planted script never appears as markup
    # nothing fetched: no external src/href, no CSS url() or @import of a remote resource
    assert not re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"@import", page, re.I)
    assert not re.search(r"<(link|iframe|object|embed)\b", page, re.I)


@pytest.mark.parametrize("ext", [".pt", ".pth", ".pkl", ".pickle", ".bin", ".npy", ".npz", ".joblib"])
def test_package_ships_no_pickle_files(ext):
    assert not [p for p in PKG.rglob(f"*{ext}")], f"the package ships {ext} files"


def test_atomic_writes_keep_the_umask_permissions(tmp_path):
    """Artifacts get the mode a plain open() would give (0644 under umask 022), not mkstemp's 0600."""
    import os
    import stat

    from cliff_lens.io import append_jsonl, atomic_save_safetensors, atomic_write_json

    old = os.umask(0o022)
    try:
        paths = [
            atomic_write_json(tmp_path / "results.json", {"a": 1}),
            atomic_save_safetensors({"x": torch.zeros(2)}, tmp_path / "t.safetensors"),
        ]
        append_jsonl(tmp_path / "r.jsonl", [{"id": "a"}])
        paths.append(tmp_path / "r.jsonl")
        for p in paths:
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
        os.umask(0o027)
        p = atomic_write_json(tmp_path / "group.json", {"a": 1})
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    finally:
        os.umask(old)
