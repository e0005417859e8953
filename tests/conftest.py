"""Shared fixtures and builders: tiny TL models, a tiny word-level tokenizer and tiny random HF models.

Everything is built in code (no downloads) and small enough for seconds-long tests on 2 cores.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from cliff_lens.testing import build_tiny_tokenizer  # noqa: E402,F401  (re-exported for tests)


def rotary_tl_model(
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_ctx: int = 64,
    d_vocab: int = 100,
    act_fn: str = "silu",
    normalization_type: str | None = "RMS",
    seed: int = 0,
    **extra,
):
    """A random rotary ``HookedTransformer`` (4 heads of 8, d_mlp 64, rotary_dim 8) in eval mode.

    TL's construction warnings are silenced; ``extra`` goes to ``HookedTransformerConfig``
    (``model_name``, ``gated_mlp``, ``final_rms``, ``device``, ...).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HookedTransformerConfig(
            n_layers=n_layers,
            d_model=d_model,
            n_ctx=n_ctx,
            d_head=8,
            n_heads=4,
            d_mlp=64,
            d_vocab=d_vocab,
            act_fn=act_fn,
            normalization_type=normalization_type,
            positional_embedding_type="rotary",
            rotary_dim=8,
            seed=seed,
            **extra,
        )
        m = HookedTransformer(cfg)
    m.eval()
    return m


def project_out_direction(m, d: torch.Tensor) -> None:
    """Remove the unit direction ``d`` from every block's read and write weights and the embedding.

    With no layer norm, ``d`` becomes a private residual channel: no block reads or writes it, so
    the residual's component along ``d`` at any layer equals the token embedding's.
    """
    P = torch.eye(len(d)) - torch.outer(d, d)
    with torch.no_grad():
        for b in m.blocks:
            for W in (b.attn.W_Q, b.attn.W_K, b.attn.W_V):
                W.copy_(torch.einsum("ed,hdk->hek", P, W))
            b.attn.W_O.copy_(b.attn.W_O @ P)
            b.attn.b_O.copy_(b.attn.b_O @ P)
            b.mlp.W_in.copy_(P @ b.mlp.W_in)
            b.mlp.W_out.copy_(b.mlp.W_out @ P)
            b.mlp.b_out.copy_(b.mlp.b_out @ P)
        m.embed.W_E.copy_(m.embed.W_E @ P)


def general_tl_model(normalization: str = "RMS", gqa: bool = True, seed: int = 0):
    """A random 3-layer model with MLPs (d_mlp 48) and (optionally) GQA + rotary + gated MLP, in eval mode.

    ``normalization="RMS"``: silu, gated MLP, rotary; otherwise gelu, plain MLP, standard positions.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        n_ctx=64,
        d_head=8,
        n_heads=4,
        d_vocab=50,
        d_mlp=48,
        act_fn="silu" if normalization == "RMS" else "gelu",
        gated_mlp=normalization == "RMS",
        normalization_type=normalization,
        positional_embedding_type="rotary" if normalization == "RMS" else "standard",
        n_key_value_heads=2 if gqa else None,
        seed=seed,
    )
    m = HookedTransformer(cfg)
    m.eval()
    return m


def imported_run_config(model_dir, pool, out):
    """The ``RunConfig`` of an imported-rollout run of every stage on a tiny model (few ablations)."""
    from cliff_lens import pipeline

    return pipeline.RunConfig(
        model=str(model_dir),
        out=out,
        rollouts=str(pool),
        template="generic",
        batch_size=4,
        n_ablation=3,
        max_new_tokens=4,
        random_seeds=2,
        top_percents=(25.0,),
        plateau_window=4,
        selection_percent=50.0,
    )


@pytest.fixture
def tiny_tokenizer():
    """A 1000-entry word-level tokenizer that adds no BOS."""
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_hooked_model():
    """A 2-layer random ``HookedTransformer`` (d_model 32, 4 heads, d_vocab 100, RMS norm, seed 0)."""
    return rotary_tl_model(gated_mlp=True, final_rms=True, device="cpu")
