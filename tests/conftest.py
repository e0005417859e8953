"""Shared fixtures: tiny TL models, a tiny word-level tokenizer and tiny random HF models.

Everything is built in code (no downloads) and small enough for seconds-long tests on 2 cores.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_WORDS = (
    "the a an and or not to of in on for with is are was be it this that how what why who can "
    "i you we they he she me my your please help make build write tell explain step steps first "
    "then answer question bomb weapon hack steal poison cake recipe story poem code python "
    "sorry cannot can't won't refuse assist sure here okay let think thinking about user wants "
    "request harmful safe dangerous illegal legal ok . , ! ? : ; ' \" ( ) - \n"
).split(" ")

TINY_SPECIALS = [
    "<unk>",
    "<pad>",
    "<s>",
    "</s>",
    "<think>",
    "</think>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]


def build_tiny_tokenizer(vocab_size: int = 1000, *, add_bos: bool = False):
    """A word-level ``PreTrainedTokenizerFast`` with ``vocab_size`` entries (specials, words, w0..wN).

    Splits on whitespace and punctuation; unknown words map to ``<unk>``. With ``add_bos`` the
    tokenizer prepends ``<s>`` (like Llama/Gemma tokenizers), otherwise it adds nothing (like Qwen).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in TINY_SPECIALS + [w for w in TINY_WORDS if w]:
        vocab.setdefault(tok, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"w{i}", len(vocab))
        i += 1
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<think>", "</think>", "<|user|>", "<|assistant|>", "<|end|>"],
    )
    return tok


@pytest.fixture
def tiny_tokenizer():
    """A 1000-entry word-level tokenizer that adds no BOS."""
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_hooked_model():
    """A 2-layer random ``HookedTransformer`` (d_model 32, 4 heads, d_vocab 100, RMS norm, seed 0)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=100,
        n_ctx=64,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        gated_mlp=True,
        final_rms=True,
        seed=0,
        device="cpu",
    )
    torch.manual_seed(0)
    model = HookedTransformer(cfg)
    model.eval()
    return model
