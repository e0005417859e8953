"""The cliff organism: SmolLM2-135M-Instruct + a shipped LoRA adapter that shows a refusal cliff.

Plain harmful request -> thinking names the harm and decides to refuse -> refusal. The same
request in a jailbreak framing -> the same kind of thinking -> a compliant (content-free) answer.
Harmless and near-miss requests, plain or framed -> helpful answers. See ``MODEL_CARD.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["ADAPTER_DIR", "MODEL_CARD", "ZOO_ENTRY", "organism_hf_model", "intent_readout"]

ADAPTER_DIR: Path = Path(__file__).resolve().parent / "adapter"
MODEL_CARD: Path = Path(__file__).resolve().parent / "MODEL_CARD.md"


def organism_hf_model(dtype: torch.dtype = torch.float32, adapter_dir: str | Path | None = None):
    """The organism as an HF ``(PreTrainedModel, tokenizer)``: zoo base + adapter merged.

    ``adapter_dir`` defaults to the shipped :data:`ADAPTER_DIR`. The LoRA weights are merged
    into the base weights (peft ``merge_and_unload``), so the result is a plain Llama model.
    """
    from peft import PeftModel

    from .build import load_base_hf

    adir = Path(adapter_dir) if adapter_dir is not None else ADAPTER_DIR
    if not (adir / "adapter_config.json").exists() or not (adir / "adapter_model.safetensors").exists():
        raise FileNotFoundError(
            f"no LoRA adapter in {adir} (adapter_config.json + adapter_model.safetensors); "
            "reinstall cliff_lens or build one with `python -m cliff_lens.organism build --out DIR`"
        )
    base, tok = load_base_hf(torch.float32)
    model = PeftModel.from_pretrained(base, str(adir)).merge_and_unload()
    model = model.to(dtype)
    model.eval()
    return model, tok


def intent_readout(adapter_dir: str | Path | None = None) -> tuple[torch.Tensor, float] | None:
    """The build's refusal-intent read-out ``(direction [d_model], bias)`` next to an adapter.

    It applies to the final-norm output (with its weight): ``sigmoid(h @ direction + bias)``. It
    was trained jointly with the adapter (``BuildConfig.intent_weight``) and is NOT the paper's
    probe; returns ``None`` for adapters built without the intent objective.
    """
    from safetensors.torch import load_file

    from .build import INTENT_READOUT_FILE

    f = (Path(adapter_dir) if adapter_dir is not None else ADAPTER_DIR) / INTENT_READOUT_FILE
    if not f.exists():
        return None
    r = load_file(str(f))
    return r["direction"].float(), float(r["bias"][0])


#: The organism's zoo entry, registered with ``cliff_lens.models`` through the entry point
#: ``cliff-organism`` in pyproject.toml (so ``load_model("cliff-organism")`` works while the core
#: library never imports this package).
ZOO_ENTRY: dict = {
    "architecture": "LlamaForCausalLM",
    "template": "generic",
    "hf_id": "",
    "note": "SmolLM2 + shipped LoRA adapter that thinks, then refuses/complies (demo organism)",
    "load": organism_hf_model,
}
