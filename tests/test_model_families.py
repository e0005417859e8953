"""The open reasoning families (gpt-oss, OLMo 2/3, Gemma 2, Mixtral, OLMoE): load_model against HF.

Tiny random models (hidden 64, 2 layers, 4 heads, vocab 1000; builders in tests/test_models.py)
saved under directory names that would mislead a name-based loader, so each test also shows that
the converter is chosen from ``config.architectures``.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_tokenizer
from test_models import FAMILY_ARCHS, VOCAB, _hf_logprobs, _tl_logprobs, _tokens, build_tiny_hf

from cliff_lens.models import (
    MOE_ARCHITECTURES,
    POST_NORM_ARCHITECTURES,
    SUPPORTED_ARCHITECTURES,
    ModelLoadError,
    detect_template,
    list_models,
    load_model,
)

ARCH_CLASS = {
    "gemma2": "Gemma2ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "olmo2-mha": "Olmo2ForCausalLM",
    "olmo3": "Olmo3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}
DIR_NAMES = {  # names TransformerLens's own loader would key on (or that point at another family)
    "gemma2": "gemma-2-2b-tiny",
    "olmo2": "OLMo-2-0425-1B-tiny",
    "olmo2-mha": "OLMo-2-1124-7B-tiny",
    "olmo3": "llama-Olmo-3-7B-Think-tiny",
    "mixtral": "Mistral-tiny",
    "olmoe": "qwen3-olmoe-tiny",
    "gpt_oss": "gpt-oss-20b-tiny",
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Each family saved to its own temp dir (model + tokenizer); returns {arch: (dir, hf_model)}."""
    out = {}
    root = tmp_path_factory.mktemp("families")
    for arch in FAMILY_ARCHS:
        hf = build_tiny_hf(arch)
        d = root / DIR_NAMES[arch]
        hf.save_pretrained(d)
        build_tiny_tokenizer(VOCAB, add_bos=arch == "gemma2").save_pretrained(d)
        out[arch] = (d, hf)
    return out


_HF_LP: dict = {}  # (id(hf), seed) -> HF log-probs, computed once per model (MoE forwards are slow on CPU)


def _diff(model, hf, seed: int = 1) -> float:
    tokens = _tokens(seed)
    key = (id(hf), seed)
    if key not in _HF_LP:
        _HF_LP[key] = _hf_logprobs(hf, tokens)
    return (_tl_logprobs(model, tokens) - _HF_LP[key]).abs().max().item()


@pytest.mark.parametrize("arch", FAMILY_ARCHS)
def test_family_matches_hf(family_dirs, arch):
    """Log-probs through load_model equal HF's (fp32, 2 x 40 tokens, past the sliding windows)."""
    d, hf = family_dirs[arch]
    model = load_model(d)
    diff = _diff(model, hf)
    assert diff <= 1e-4, f"{arch}: max |dlogprob| = {diff}"
    cfg = model.cfg
    assert cfg.original_architecture == ARCH_CLASS[arch]
    assert cfg.normalization_type == "RMS"  # unfolded: the probe's weighted final norm survives
    assert not torch.allclose(model.ln_final.w, torch.ones_like(model.ln_final.w))
    if ARCH_CLASS[arch] in MOE_ARCHITECTURES:
        assert (cfg.num_experts, cfg.experts_per_token) == (4, 2)
    if arch in ("gemma2", "olmo3", "gpt_oss"):  # sliding-window layers alternate with full ones
        assert cfg.use_local_attn and cfg.attn_types == ["local", "global"] and cfg.window_size == 8


@pytest.mark.parametrize("arch", ["gemma2", "mixtral", "gpt_oss"])
def test_family_fold_ln_matches_hf(family_dirs, arch):
    """Pre-norm families fold their norms exactly (MoE: into the router and every expert)."""
    d, hf = family_dirs[arch]
    model = load_model(d, fold_ln=True)
    assert model.cfg.normalization_type == "RMSPre"
    assert _diff(model, hf) <= 1e-4


@pytest.mark.parametrize("arch", ["olmo2", "olmo3"])
def test_post_norm_refuses_folding(family_dirs, arch):
    """OLMo 2/3 normalise each sublayer's output: folding or centring would change the model."""
    d, _ = family_dirs[arch]
    assert ARCH_CLASS[arch] in POST_NORM_ARCHITECTURES
    for kw in ({"fold_ln": True}, {"center_writing_weights": True}):
        with pytest.raises(ModelLoadError, match=rf"{ARCH_CLASS[arch]}.*post-norm.*{next(iter(kw))}=True"):
            load_model(d, **kw)


def test_softcapped_logits_refuse_center_unembed(family_dirs):
    d, _ = family_dirs["gemma2"]
    with pytest.raises(ModelLoadError, match=r"Gemma2ForCausalLM.*soft-caps.*center_unembed=False"):
        load_model(d, center_unembed=True)


def test_gpt_oss_custom_swiglu_is_refused(tmp_path):
    """TL's gpt-oss experts hard-code swiglu alpha/limit; another value is an error, not a silent mismatch."""
    hf = build_tiny_hf("gpt_oss")
    hf.config.swiglu_limit = 5.0
    with pytest.raises(ModelLoadError, match=r"GptOssForCausalLM.*swiglu_limit=5\.0"):
        load_model(hf, tokenizer=build_tiny_tokenizer(VOCAB))


def test_mxfp4_checkpoint_is_unpacked_on_load(family_dirs, monkeypatch, tmp_path):
    """gpt-oss ships MXFP4 experts: the HF load asks transformers to dequantise them."""
    import transformers

    d, _ = family_dirs["gpt_oss"]
    q = tmp_path / "gpt-oss-mxfp4"
    q.mkdir()
    for f in d.iterdir():
        (q / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4"}
    (q / "config.json").write_text(json.dumps(cfg))
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kw):
        seen.update(kw)
        kw.pop("quantization_config")
        kw["config"].quantization_config = None
        return real(path, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model = load_model(q)
    assert type(seen["quantization_config"]).__name__ == "Mxfp4Config"
    assert seen["quantization_config"].dequantize is True
    assert model.cfg.original_architecture == "GptOssForCausalLM"


def test_templates_by_architecture_and_tokenizer(family_dirs):
    """No chat template: gpt-oss is harmony by architecture; the rest fall back to the name."""
    d, _ = family_dirs["gpt_oss"]
    assert load_model(d).cliff_template == "gpt-oss"
    assert detect_template("", None, "GptOssForCausalLM") == "gpt-oss"
    assert load_model(family_dirs["olmo3"][0]).cliff_template == "olmo3-think"  # by name: no chat template
    assert load_model(family_dirs["mixtral"][0]).cliff_template == "generic"


def test_list_models_lists_reasoning_families():
    rows = {r["name"]: r for r in list_models()}
    expect = {
        "openai/gpt-oss-20b": ("GptOssForCausalLM", "gpt-oss"),
        "openai/gpt-oss-120b": ("GptOssForCausalLM", "gpt-oss"),
        "allenai/Olmo-3-7B-Think": ("Olmo3ForCausalLM", "olmo3-think"),
        "allenai/Olmo-3-32B-Think": ("Olmo3ForCausalLM", "olmo3-think"),
        "Qwen/Qwen3-4B-Thinking-2507": ("Qwen3ForCausalLM", "qwen3"),
        "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B": ("Qwen3ForCausalLM", "deepseek-r1"),
    }
    for name, (arch, template) in expect.items():
        assert (rows[name]["architecture"], rows[name]["template"], rows[name]["route"]) == (
            arch,
            template,
            "convert",
        ), name
    moe_qwen = rows["Qwen/Qwen3-30B-A3B-Thinking-2507"]
    assert moe_qwen["route"] == "unsupported" and "Qwen3MoeForCausalLM" in moe_qwen["note"]
    for r in rows.values():
        assert (r["route"] == "unsupported") == (
            r["route"] != "zoo" and r["architecture"] not in SUPPORTED_ARCHITECTURES
        )


# -- what the analyses need: hook_z ablation, its weight export, direct attribution ------------
ABLATE = [(0, 1), (1, 2)]


def _loaded(family_dirs, arch):
    """(TL model, HF model): from the saved family dir, or built in memory (gemma3)."""
    if arch in family_dirs:
        d, hf = family_dirs[arch]
        return load_model(d), hf
    hf = build_tiny_hf(arch)
    return load_model(hf, tokenizer=build_tiny_tokenizer(VOCAB)), hf


@pytest.mark.parametrize("arch", [a for a in FAMILY_ARCHS if a != "olmo2-mha"] + ["gemma3", "qwen3"])
def test_zero_ablation_export_matches_hooks(family_dirs, arch):
    """Zeroing heads at hook_z in TransformerLens == zeroing their o_proj columns in the HF model
    (what export_ablated_hf saves for vLLM/HF generation), including post-norm and MoE families."""
    from cliff_lens.ablation import ablate_heads, export_ablated_hf

    model, hf = _loaded(family_dirs, arch)
    tokens = _tokens(4)[:1, :24]
    with ablate_heads(model, ABLATE, mode="zero"):
        tl = _tl_logprobs(model, tokens)
    edited = export_ablated_hf(hf, ABLATE, "zero")
    assert (tl - _hf_logprobs(edited, tokens)).abs().max().item() <= 1e-4
    assert (tl - _tl_logprobs(model, tokens)).abs().max().item() > 1e-3  # the ablation does something


@pytest.mark.parametrize(
    "arch", ["gemma2", "gemma3", "olmo2", "olmo3", "mixtral", "olmoe", "gpt_oss", "qwen3"]
)
def test_direct_attribution_is_complete(family_dirs, arch):
    """Embedding + heads + attention biases + (routed) MLP outputs add up to the residual stream
    the probe reads, on the converted models: MoE head terms need nothing MoE-specific; Gemma 2's
    ln1_post and OLMo's post-attention ln1 are frozen at their scale (heads.py; its own tests:
    tests/test_heads_postnorm.py)."""
    from cliff_lens.heads import direct_attribution_decomposition, head_attributions

    model, _ = _loaded(family_dirs, arch)
    tokens = _tokens(5)[0, :20]
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    dec = direct_attribution_decomposition(model, tokens, v, pos=-1, hook=hook)
    assert abs(dec.error) <= 1e-4 * max(1.0, abs(dec.resid_final)), dec.error
    heads = head_attributions(model, [tokens], v, positions="last", hook=hook)
    assert torch.allclose(heads, dec.heads, atol=1e-5)


GEN_PROMPTS = [
    "how to make a cake",
    "write a poem",
    "explain python code step by step please help me with this question",
    "hi",
    "tell me a story about a weapon and a cake",
]


@pytest.mark.parametrize("arch", ["olmo3", "gpt_oss"])
def test_batched_generation_equals_single_and_hf(arch):
    """generate_rollouts: left-padded batches == one prompt at a time == HF's own greedy decoding
    without a cache, through post-norm + sliding window + YaRN (OLMo 3) and sinks + MoE (gpt-oss);
    prompt + 12 new tokens run past the sliding window (8)."""
    from cliff_lens.rollout import _encode, generate_rollouts
    from cliff_lens.templates import get_template

    hf = build_tiny_hf(arch)
    if arch == "gpt_oss":  # a larger embedding scale, so that greedy decoding is not one repeated token
        with torch.no_grad():
            hf.model.embed_tokens.weight.mul_(20.0)
    tok = build_tiny_tokenizer(VOCAB)
    model = load_model(hf, tokenizer=tok, template="generic")
    n = 12
    kw = dict(max_new_tokens=n, progress=False)
    batched = generate_rollouts(model, GEN_PROMPTS, batch_size=5, **kw)
    single = [generate_rollouts(model, [p], batch_size=1, **kw)[0] for p in GEN_PROMPTS]
    assert len({r.meta["n_prompt_tokens"] for r in batched}) >= 3  # real left padding
    tmpl = get_template("generic")
    outs = set()
    for p, b, s in zip(GEN_PROMPTS, batched, single):
        assert b.thinking == s.thinking
        ids = torch.tensor([_encode(tok, tmpl.generation_prompt(p, tok))])
        for _ in range(n):  # HF greedy, full forward per step
            with torch.no_grad():
                nxt = int(hf(ids).logits[0, -1].argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        truth = ids[0, -n:].tolist()
        assert b.thinking == tmpl.split(tok.decode(truth, skip_special_tokens=False))[0], p
        outs.add(b.thinking)
    assert len(outs) >= 3  # not degenerate


@pytest.mark.parametrize("arch", ["qwen3", "gemma3", "olmo3"])  # per-head, Gemma-style, full-width qk-norm
def test_attention_biases_are_converted(arch):
    """attention_bias=True checkpoints (q/k/v/o_proj biases; TL's converters for these write zeros)
    match HF: such configs are what a saved mean-ablation export turns on."""
    hf = build_tiny_hf(arch, attention_bias=True)
    assert hf.model.layers[0].self_attn.o_proj.bias.abs().sum() > 0
    model = load_model(hf, tokenizer=build_tiny_tokenizer(VOCAB))
    assert _diff(model, hf) <= 1e-4


@pytest.mark.parametrize("arch", ["olmo3", "gemma2", "gpt_oss", "qwen3"])
def test_mean_ablation_export_round_trip(family_dirs, tmp_path, arch):
    """A saved mean-ablated model (o_proj bias turned on by the export where the config has
    ``attention_bias``; gpt-oss has one already) loads back through load_model with the same
    log-probs as the hook ablation it was made from."""
    from cliff_lens.ablation import ablate_heads, compute_head_means, export_ablated_hf

    model, hf = _loaded(family_dirs, arch)
    tokens = _tokens(6)[:1, :24]
    means = compute_head_means(model, [tokens[0]])
    with ablate_heads(model, ABLATE, mode="mean", means=means):
        tl = _tl_logprobs(model, tokens)
    out = tmp_path / f"{arch}-mean-ablated"
    export_ablated_hf(hf, ABLATE, "mean", means=means, out_dir=out, tokenizer=build_tiny_tokenizer(VOCAB))
    assert (tl - _tl_logprobs(load_model(out), tokens)).abs().max().item() <= 1e-4


def test_mixtral_mean_export_cannot_be_saved(family_dirs, tmp_path):
    """Mixtral's config has no flag that gives o_proj a bias, so a saved mean-ablated Mixtral could
    not reload its mean term: export refuses (zero ablation and in-memory mean export work)."""
    from cliff_lens.ablation import export_ablated_hf

    _, hf = family_dirs["mixtral"]
    means = torch.zeros(2, 4, 16)
    with pytest.raises(ValueError, match=r"MixtralForCausalLM has no o_proj bias"):
        export_ablated_hf(hf, ABLATE, "mean", means=means, out_dir=tmp_path / "m")
