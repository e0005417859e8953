"""load_model / load_hf: every source route against HF's own forward pass (offline, tiny models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_tokenizer

from cliff_lens.models import (
    SUPPORTED_ARCHITECTURES,
    ModelLoadError,
    detect_template,
    list_models,
    load_hf,
    load_model,
)

VOCAB = 1000
SEQ = 40  # longer than the sliding windows (8) below, shorter than longrope's original context (64)
COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    bos_token_id=2,
    eos_token_id=3,
    pad_token_id=1,
)


def _hf_config(arch: str):
    import transformers as tf

    if arch == "llama":  # llama3 RoPE scaling, as in DeepSeek-R1-Distill-Llama-8B
        return tf.LlamaConfig(
            **COMMON,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )
    if arch == "qwen2":  # q/k/v biases, GQA, as in DeepSeek-R1-Distill-Qwen
        return tf.Qwen2Config(**COMMON, rope_theta=10000.0)
    if arch == "qwen3":  # qk-norm, explicit head_dim
        return tf.Qwen3Config(**COMMON, head_dim=16)
    if arch == "phi3":  # fused qkv + partial rotary + longrope, as in Phi-4-mini-reasoning
        c = {**COMMON, "max_position_embeddings": 256}
        return tf.Phi3Config(
            **c,
            partial_rotary_factor=0.75,
            original_max_position_embeddings=64,
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0 + 0.25 * i for i in range(6)],
                "long_factor": [4.0] * 6,
            },
        )
    if arch == "gemma3":  # text-only Gemma 3: local/global layers, linear-scaled global RoPE
        return tf.Gemma3TextConfig(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            },
        )
    if arch == "mistral":
        return tf.MistralConfig(**COMMON, sliding_window=8)
    # -- reasoning-model families (tests/test_model_families.py) ---------------------------------
    if arch == "gemma2":  # local/global layers, pre+post norms, small soft-caps so they bite
        return tf.Gemma2Config(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        )
    if arch == "olmo2":  # post-norm, full-width qk-norm, GQA as OLMo-2-0325-32B
        return tf.Olmo2Config(**COMMON, rope_theta=500000.0)
    if arch == "olmo2-mha":  # as OLMo-2-1124-7B
        return tf.Olmo2Config(**{**COMMON, "num_key_value_heads": 4})
    if arch == "olmo3":  # + sliding/full layers, YaRN on full layers only, as OLMo-3-7B-Think
        yarn = {
            "rope_type": "yarn",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "attention_factor": 1.2,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 32,
        }
        return tf.Olmo3Config(
            **COMMON,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0},
                "full_attention": yarn,
            },
        )
    if arch == "mixtral":  # 4 experts, top-2 (renormalised)
        return tf.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)
    if arch == "olmoe":  # 4 experts, top-2 (not renormalised), qk-norm, clip_qkv
        return tf.OlmoeConfig(**COMMON, num_experts=4, num_experts_per_tok=2, clip_qkv=1.0)
    if arch == "gpt_oss":  # sinks, qkv/o biases, biased router + experts, YaRN, sliding/full layers
        return tf.GptOssConfig(
            **COMMON,
            head_dim=16,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 8.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 32,
            },
        )
    raise AssertionError(arch)


def build_tiny_hf(arch: str, seed: int = 0, **config_overrides):
    """A random tiny HF causal LM whose norm weights (and biases) are randomised too (so folding is
    non-trivial); ``config_overrides`` are set on the HF config (e.g. ``attention_bias=True``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _hf_config(arch)
    for k, v in config_overrides.items():
        setattr(config, k, v)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.2 * torch.randn_like(p) + (0.0 if arch.startswith("gemma") else 1.0))
            elif name.endswith("bias") or name.endswith("sinks"):
                p.copy_(0.1 * torch.randn_like(p))
            if arch in FAMILY_ARCHS and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(5.0)  # attention scores of order 1-10, so soft-caps, sinks and RoPE scaling bite
    return model


ARCHS = ["llama", "qwen2", "qwen3", "phi3", "gemma3", "mistral"]
#: reasoning-model families added later (parity tests in tests/test_model_families.py)
FAMILY_ARCHS = ["gemma2", "olmo2", "olmo2-mha", "olmo3", "mixtral", "olmoe", "gpt_oss"]
DIR_NAMES = {  # the llama dir name contains "llama" (TL's own local route skips its config then)
    "llama": "llama-tiny",
    "qwen2": "DeepSeek-R1-Distill-Qwen-tiny",
    "qwen3": "qwen3-tiny",
    "phi3": "phi3-tiny",
    "gemma3": "gemma3-tiny",
    "mistral": "mistral-tiny",
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Each architecture saved to its own temp dir (model + tokenizer); returns {arch: (dir, hf_model)}."""
    out = {}
    root = tmp_path_factory.mktemp("tiny_models")
    for arch in ARCHS:
        hf = build_tiny_hf(arch)
        d = root / DIR_NAMES[arch]
        hf.save_pretrained(d)
        build_tiny_tokenizer(VOCAB, add_bos=arch in ("llama", "gemma3")).save_pretrained(d)
        out[arch] = (d, hf)
    return out


def _tokens(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, VOCAB, (2, SEQ), generator=g)


def _hf_logprobs(hf, tokens):
    with torch.no_grad():
        return hf(tokens).logits.float().log_softmax(-1)


def _tl_logprobs(model, tokens):
    with torch.no_grad():
        return model(tokens).float().log_softmax(-1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fold_ln", [False, True])
def test_local_dir_matches_hf(tiny_dirs, arch, fold_ln):
    d, hf = tiny_dirs[arch]
    model = load_model(d, fold_ln=fold_ln)
    tokens = _tokens()
    diff = (_tl_logprobs(model, tokens) - _hf_logprobs(hf, tokens)).abs().max().item()
    assert diff < 1e-4, f"{arch} fold_ln={fold_ln}: max |dlogprob| = {diff}"
    assert model.tokenizer is not None
    if fold_ln:
        assert model.cfg.normalization_type == "RMSPre"
    else:  # the paper's probe needs the final norm weight: it must survive unfolded
        assert model.cfg.normalization_type == "RMS"
        assert not torch.allclose(model.ln_final.w, torch.ones_like(model.ln_final.w))


def test_center_switches_keep_logprobs(tiny_dirs):
    d, hf = tiny_dirs["qwen2"]
    model = load_model(
        d, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    tokens = _tokens(2)
    assert (_tl_logprobs(model, tokens) - _hf_logprobs(hf, tokens)).abs().max().item() < 1e-4
    # centred unembed: every row of W_U has mean zero over the vocab
    assert model.W_U.mean(-1).abs().max().item() < 1e-5


def test_string_input_tokenizes_like_hf(tiny_dirs):
    """model("text") feeds the same tokens HF's tokenizer gives: BOS once for a BOS tokenizer, none for Qwen."""
    text = "please explain how to make a cake"
    for arch, expect_bos in (("llama", True), ("qwen2", False)):
        d, hf = tiny_dirs[arch]
        model = load_model(d)
        hf_ids = model.tokenizer(text, return_tensors="pt").input_ids
        tl_ids = model.to_tokens(text)
        assert torch.equal(tl_ids, hf_ids), arch
        assert (tl_ids[0] == model.tokenizer.bos_token_id).sum().item() == (1 if expect_bos else 0)
        diff = (_tl_logprobs(model, text) - _hf_logprobs(hf, hf_ids)).abs().max().item()
        assert diff < 1e-4


def test_in_memory_model_is_not_modified(tiny_dirs):
    _, hf = tiny_dirs["phi3"]
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    tok = build_tiny_tokenizer(VOCAB)
    model = load_model(hf, tokenizer=tok, fold_ln=True, center_writing_weights=True)
    tokens = _tokens(3)
    assert (_tl_logprobs(model, tokens) - _hf_logprobs(hf, tokens)).abs().max().item() < 1e-4
    assert model.tokenizer is tok
    after = hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batched_equals_one_at_a_time(tiny_dirs):
    d, _ = tiny_dirs["gemma3"]
    model = load_model(d)
    tokens = _tokens(4)
    batched = _tl_logprobs(model, tokens)
    single = torch.cat([_tl_logprobs(model, tokens[i : i + 1]) for i in range(tokens.shape[0])])
    assert torch.allclose(batched, single, atol=1e-5)


def test_dtype_bfloat16(tiny_dirs):
    d, hf = tiny_dirs["qwen3"]
    model = load_model(d, dtype="bf16")
    assert model.cfg.dtype == torch.bfloat16
    assert model.W_Q.dtype == torch.bfloat16
    tokens = _tokens(5)
    diff = (_tl_logprobs(model, tokens) - _hf_logprobs(hf, tokens)).abs().max().item()
    assert 0 < diff < 0.5  # bf16 rounding, but the same model


def test_load_hf_round_trip(tiny_dirs):
    d, hf = tiny_dirs["llama"]
    hf2, tok = load_hf(d)
    tokens = _tokens(6)
    assert torch.allclose(_hf_logprobs(hf2, tokens), _hf_logprobs(hf, tokens))
    assert tok.bos_token == "<s>"
    same, tok2 = load_hf(hf, tokenizer=tok)
    assert same is hf and tok2 is tok


def test_template_detection(tiny_dirs):
    d, _ = tiny_dirs["qwen2"]
    assert load_model(d).cliff_template == "deepseek-r1"  # from the dir name
    assert load_model(d, template="qwen3").cliff_template == "qwen3"
    assert load_model(tiny_dirs["mistral"][0]).cliff_template == "generic"
    assert detect_template("microsoft/Phi-4-mini-reasoning") == "phi4-mini-reasoning"
    assert detect_template("Qwen/QwQ-32B") == "qwen3"
    assert detect_template("Skywork/Skywork-OR1-7B") == "deepseek-r1"
    assert detect_template("some/chat-model") == "generic"


def test_list_models():
    rows = list_models()
    by_name = {r["name"]: r for r in rows}
    assert by_name["smollm2-135m-instruct"]["route"] == "zoo"
    r1 = by_name["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    assert (r1["architecture"], r1["template"], r1["route"]) == ("Qwen2ForCausalLM", "deepseek-r1", "convert")
    assert by_name["Qwen/Qwen3-8B"]["tl_official"] == "yes"
    assert by_name["Qwen/QwQ-32B"]["tl_official"] == "no"
    assert all(r["architecture"] in SUPPORTED_ARCHITECTURES for r in rows if r["route"] != "unsupported")


def _fake_hub_snapshot(cache: Path, repo_id: str, model, tokenizer) -> None:
    """Put ``model`` + ``tokenizer`` into an HF hub cache layout under ``cache`` as ``repo_id``."""
    commit = "0" * 40
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_tl_official_names_offline_from_cache(tmp_path):
    """TL official names load offline from the HF cache: supported archs by conversion, others via TL."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = build_tiny_tokenizer(VOCAB)
    qwen = build_tiny_hf("qwen2")
    _fake_hub_snapshot(tmp_path, "Qwen/Qwen2-0.5B", qwen, tok)
    torch.manual_seed(0)
    neox = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        )
    ).eval()
    _fake_hub_snapshot(tmp_path, "EleutherAI/pythia-14m", neox, tok)
    tokens = _tokens(7)
    for name, hf in (("Qwen/Qwen2-0.5B", qwen), ("EleutherAI/pythia-14m", neox)):
        model = load_model(name, cache_dir=str(tmp_path))
        assert (_tl_logprobs(model, tokens) - _hf_logprobs(hf, tokens)).abs().max().item() < 1e-4, name
        assert model.tokenizer.get_vocab() == tok.get_vocab()
    assert model.cfg.original_architecture == "GPTNeoXForCausalLM"


# ---------------------------------------------------------------------------------- bad input


def test_unknown_name():
    with pytest.raises(
        ModelLoadError, match=r"unknown model name 'definitely-not-a-model'.*cliff-lens models"
    ):
        load_model("definitely-not-a-model")


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=r"does not exist"):
        load_model(str(missing))
    with pytest.raises(ModelLoadError, match=r"does not exist"):
        load_model("weights/model-Q4_K_M.gguf")


def test_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path / "empty")


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2-tiny"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100)).save_pretrained(d)
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    msg = str(e.value)
    assert "GPT2LMHeadModel" in msg and "gpt2-tiny" in msg
    assert all(a in msg for a in SUPPORTED_ARCHITECTURES)


def test_unsupported_gguf_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "tiny-rwkv.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"tiny-rwkv\.gguf.*'rwkv6'.*supported GGUF architectures"):
        load_model(path)


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"not a \.gguf file"):
        load_model(p)


def test_uncached_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"not in the local HF cache.*HF_HUB_OFFLINE"):
        load_model("cliff-lens-test/no-such-model-xyz")


def test_in_memory_unsupported_and_bad_dtype():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ModelLoadError, match=r"in-memory GPT2LMHeadModel.*'GPT2LMHeadModel'"):
        load_model(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100)))
    with pytest.raises(ModelLoadError, match=r"unknown dtype 'float8'"):
        load_model("smollm2-135m-instruct", dtype="float8")
    with pytest.raises(ModelLoadError, match=r"not understood"):
        load_model(12345)


# ---------------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def smollm2_dir():
    from cliff_lens import zoo

    try:
        return zoo.smollm2_hf_dir()
    except Exception as e:  # noqa: BLE001 - ZooError, pip failures
        pytest.skip(f"SmolLM2 zoo unavailable (no HF cache copy and no package registry): {e}")


def test_smollm2_zoo_matches_hf(smollm2_dir):
    model = load_model("smollm2-135m-instruct")
    hf, tok = load_hf(smollm2_dir)
    assert model.cliff_template == "generic"
    text = "Explain why the sky is blue in one sentence."
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(model.to_tokens(text), ids)
    diff = (_tl_logprobs(model, ids) - _hf_logprobs(hf, ids)).abs().max().item()
    assert diff < 1e-3, diff


@pytest.mark.slow  # dequantises the 135M GGUF twice: ~90 s on 2 busy cores
def test_gguf_file_matches_hf_from_gguf(smollm2_dir):
    from cliff_lens import zoo

    ggufs = sorted((zoo.cache_dir() / "gguf").glob("*.gguf"))
    if not ggufs:
        pytest.skip(f"no GGUF file in {zoo.cache_dir() / 'gguf'} (the zoo used the HF cache copy)")
    model = load_model(ggufs[0])
    hf, tok = load_hf(ggufs[0])
    ids = tok("Hello there, how are you?", return_tensors="pt").input_ids
    diff = (_tl_logprobs(model, ids) - _hf_logprobs(hf, ids)).abs().max().item()
    assert diff < 1e-3, diff


def test_env_is_offline():
    """The suite must never reach a hub: conftest forces offline mode."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert Path(__file__).name == "test_models.py"
