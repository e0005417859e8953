"""Shared fixtures: tiny TL models, a tiny word-level tokenizer and tiny random HF models.

Everything is built in code (no downloads) and small enough for seconds-long tests on 2 cores.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from cliff_lens.testing import build_tiny_tokenizer  # noqa: E402,F401  (re-exported for tests)


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
