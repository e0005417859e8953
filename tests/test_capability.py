"""Capability cost of an ablation: KL and answer log-likelihood change, teacher-forced."""

from __future__ import annotations

import pytest
import torch
from conftest import rotary_tl_model

from cliff_lens.ablation import ablation_hooks
from cliff_lens.capability import intervention_cost
from cliff_lens.templates import get_template


@pytest.fixture(scope="module", params=["RMS", "LN"])
def setup(request):
    from cliff_lens.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer(100)
    model = rotary_tl_model(d_vocab=len(tok), normalization_type=request.param, gated_mlp=True)
    model.tokenizer = tok
    tpl = get_template("generic")
    toks = [
        tpl.tokenize(tok, "write a poem about cake", "a poem is fine", "sure here is a poem about cake"),
        tpl.tokenize(tok, "tell me a story", "a story is safe", "okay the first step is to think"),
        tpl.tokenize(tok, "explain python code", "this is legal", "here it is"),
    ]
    return model, toks


def _manual(model, t, hooks):
    """KL and log-prob change from full-sequence logits, one rollout at a time."""
    ids = t.tokens[None]
    a, b = t.spans["answer"]
    base = torch.log_softmax(model(ids), -1)[0, a - 1 : b - 1]
    abl = torch.log_softmax(model.run_with_hooks(ids, fwd_hooks=hooks), -1)[0, a - 1 : b - 1]
    kl = (base.exp() * (base - abl)).sum(-1).mean()
    tgt = t.tokens[a:b]
    d = (abl.gather(-1, tgt[:, None]) - base.gather(-1, tgt[:, None])).mean()
    return float(kl), float(d)


def test_no_intervention_costs_nothing(setup):
    model, toks = setup
    cost = intervention_cost(model, toks, [])
    assert cost.kl.mean == pytest.approx(0.0, abs=1e-6)
    assert cost.answer_logprob_delta.mean == pytest.approx(0.0, abs=1e-6)
    assert cost.n_tokens == sum(t.spans["answer"][1] - t.spans["answer"][0] for t in toks)


def test_ablation_cost_equals_full_forward_and_batched_equals_single(setup):
    model, toks = setup
    hooks = ablation_hooks(model, [(0, 1), (1, 2)], mode="zero")
    batched = intervention_cost(model, toks, hooks, batch_size=3)
    for i, t in enumerate(toks):
        kl, d = _manual(model, t, hooks)
        assert batched.kl_per_rollout[i] == pytest.approx(kl, rel=1e-4, abs=1e-6)
        assert batched.delta_per_rollout[i] == pytest.approx(d, rel=1e-4, abs=1e-6)
        single = intervention_cost(model, [t], hooks, batch_size=1)
        assert single.kl_per_rollout[0] == pytest.approx(batched.kl_per_rollout[i], rel=1e-5, abs=1e-7)
    assert batched.kl.mean > 0
    d = batched.to_dict()
    assert d["kl"]["n"] == 3 and len(d["kl"]["ci95"]) == 2


def test_rollouts_without_answers_are_refused(setup):
    model, toks = setup
    tpl = get_template("generic")
    empty = tpl.tokenize(model.tokenizer, "a question", "a thought", "")
    with pytest.raises(ValueError, match="non-empty answer"):
        intervention_cost(model, [empty], [])


def test_soft_capped_logits_match_the_full_forward():
    """Gemma 2 soft-caps its final logits; the KL must use the capped logits, as ``model(tokens)``."""
    from cliff_lens.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer(100)
    # a small cap so that the cap changes the logits a lot (random logits reach a few units)
    model = rotary_tl_model(d_vocab=len(tok), output_logits_soft_cap=0.5)
    assert model.cfg.output_logits_soft_cap == 0.5
    model.tokenizer = tok
    tpl = get_template("generic")
    toks = [
        tpl.tokenize(tok, "write a poem about cake", "a poem is fine", "sure here is a poem about cake"),
        tpl.tokenize(tok, "tell me a story", "a story is safe", "okay the first step is to think"),
    ]
    ids = toks[0].tokens[None]
    logits = model(ids)
    assert logits.abs().max() <= 0.5 + 1e-6  # the forward did cap
    hooks = ablation_hooks(model, [(0, 1), (1, 2)], mode="zero")
    cost = intervention_cost(model, toks, hooks, batch_size=2)
    for i, t in enumerate(toks):
        kl, d = _manual(model, t, hooks)
        assert kl > 0
        assert cost.kl_per_rollout[i] == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert cost.delta_per_rollout[i] == pytest.approx(d, rel=1e-4, abs=1e-7)
