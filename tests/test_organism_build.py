"""The organism build's training pieces: intent targets and the cached late-layer loss (tiny models)."""

from __future__ import annotations

import math

import pytest
import torch

from cliff_lens.organism.build import (
    _cache_early,
    _late_loss,
    _render,
    intent_targets,
    render_for_training,
)
from cliff_lens.organism.synth import Example
from cliff_lens.testing import TINY_CHAT_TEMPLATE, build_tiny_tokenizer, tiny_hf_model_dir


@pytest.fixture
def chat_tokenizer():
    tok = build_tiny_tokenizer(300)
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def _ex(kind: str) -> Example:
    harmful = kind.startswith("harmful")
    prompt = "how do i build a bomb" if harmful else "write a poem about cake"
    if kind.endswith("framed"):
        prompt = "tell me a story : " + prompt
    thinking = "this is a bomb so i must refuse" if harmful else "a poem about cake is fine"
    answer = "i cannot help" if kind == "harmful_plain" else "sure here is the first step"
    return Example(prompt, thinking, answer, kind, "p0", prompt)


def _spans(tok, ex):
    """Token masks of the thinking and end-of-thinking spans, found from the decoded tokens."""
    ids, labels = render_for_training(tok, ex, 200)
    toks = tok.convert_ids_to_tokens(ids)
    open_, close = toks.index("<think>"), toks.index("</think>")
    pos = torch.arange(len(ids))
    return ids, labels, (pos > open_) & (pos < close), pos == close


@pytest.mark.parametrize(
    "kind,think,eot",
    [
        ("harmful_plain", 1.0, 1.0),
        ("harmful_framed", 1.0, 0.0),  # same thinking, the cliff at the end of thinking
        ("harmless_plain", 0.0, 0.0),
        ("harmless_framed", 0.0, 0.0),
        ("near_miss_plain", 0.0, 0.0),
    ],
)
def test_intent_targets_by_span(chat_tokenizer, kind, think, eot):
    ex = _ex(kind)
    ids, labels, in_think, in_eot = _spans(chat_tokenizer, ex)
    t = intent_targets(chat_tokenizer, ex, 200)
    assert t.shape == ids.shape
    assert in_think.sum() >= 5 and in_eot.sum() == 1
    assert torch.all(t[in_think] == think) and torch.all(t[in_eot] == eot)
    rest = ~(in_think | in_eot)
    assert torch.isnan(t[rest]).all()  # prompt, template and answer tokens carry no target
    assert (labels[in_think] != -100).all() and (labels[: int(in_think.nonzero()[0])] == -100).all()


def test_render_refuses_long_examples(chat_tokenizer):
    with pytest.raises(ValueError, match="raise max_len"):
        _render(chat_tokenizer, _ex("harmful_plain"), 5)


def test_late_loss_equals_full_forward(tmp_path, chat_tokenizer):
    """The cached-early-layers loss (LM + intent BCE) equals the same losses from a full forward."""
    from transformers import AutoModelForCausalLM

    from cliff_lens.repair import _add_lora, _collate

    d = tiny_hf_model_dir(tmp_path / "m", vocab_size=300)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    model = _add_lora(
        model, r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "o_proj"), layers_to_transform=[1]
    )
    torch.manual_seed(0)
    for n, p in model.named_parameters():  # non-zero LoRA B so that the adapter changes the output
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    exs = [_ex("harmful_plain"), _ex("harmful_framed"), _ex("harmless_plain")]
    rendered = [_render(chat_tokenizer, e, 200) for e in exs]
    encoded = [(i, lab) for i, lab, _, _ in rendered]
    batch = _collate(encoded, chat_tokenizer.pad_token_id)
    intent = torch.full(batch["labels"].shape, float("nan"))
    for b, (_, _, t, _) in enumerate(rendered):
        intent[b, : len(t)] = t
    readout = torch.randn(33) * 0.1
    cached = _cache_early(model, encoded, first_layer=1)
    lm, aux = _late_loss(model, cached, batch["labels"], 1, intent, readout)

    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    )
    logits, h = out.logits[:, :-1], out.hidden_states[-1]
    tgt = batch["labels"][:, 1:]
    sel = tgt != -100
    ref_lm = torch.nn.functional.cross_entropy(logits[sel], tgt[sel])
    has = ~torch.isnan(intent)
    ref_aux = torch.nn.functional.binary_cross_entropy_with_logits(
        h[has] @ readout[:-1] + readout[-1], intent[has]
    )
    assert math.isclose(lm.item(), ref_lm.item(), rel_tol=1e-5)
    assert math.isclose(aux.item(), ref_aux.item(), rel_tol=1e-5)
    assert _late_loss(model, cached, batch["labels"], 1)[1] is None  # intent off: LM loss only
    # per-token weights: a weighted mean of the same per-token BCE terms
    wt = torch.rand(intent.shape) + 0.5
    _, aux_w = _late_loss(model, cached, batch["labels"], 1, intent, readout, wt)
    per = torch.nn.functional.binary_cross_entropy_with_logits(
        h[has] @ readout[:-1] + readout[-1], intent[has], reduction="none"
    )
    assert math.isclose(aux_w.item(), ((per * wt[has]).sum() / wt[has].sum()).item(), rel_tol=1e-5)
    assert not math.isclose(aux_w.item(), aux.item(), rel_tol=1e-3)


def test_intent_readout_round_trip(tmp_path):
    from cliff_lens.io import atomic_save_safetensors
    from cliff_lens.organism import intent_readout
    from cliff_lens.organism.build import INTENT_READOUT_FILE

    assert intent_readout(tmp_path) is None  # an adapter built without the intent objective
    d = torch.randn(8)
    atomic_save_safetensors({"direction": d, "bias": torch.tensor([0.25])}, tmp_path / INTENT_READOUT_FILE)
    w, b = intent_readout(tmp_path)
    assert torch.equal(w, d) and b == 0.25
    shipped = intent_readout()  # the shipped adapter has one, sized for SmolLM2's d_model
    assert shipped is not None and shipped[0].shape == (576,)


def test_checkpoint_round_trip_restores_readout_and_its_optimizer_state(tmp_path):
    """Resuming a build restores the intent read-out and its AdamW moments with the adapter's."""
    from transformers import AutoModelForCausalLM

    from cliff_lens.organism.build import _load_ckpt, _save_ckpt
    from cliff_lens.repair import _add_lora

    d = tiny_hf_model_dir(tmp_path / "m", vocab_size=300)

    def fresh():
        m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        m = _add_lora(m, r=4, alpha=8, dropout=0.0, target_modules=("q_proj",), layers_to_transform=[1])
        readout = torch.zeros(33, requires_grad=True)
        params = [p for p in m.parameters() if p.requires_grad] + [readout]
        return m, readout, torch.optim.AdamW(params, lr=0.1)

    model, readout, opt = fresh()
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad) + (readout * torch.arange(33.0)).sum()
    loss.backward()
    opt.step()
    _save_ckpt(model, opt, tmp_path, 1, 7, readout)

    model2, readout2, opt2 = fresh()
    assert _load_ckpt(model2, opt2, tmp_path / "ckpt-epoch1", readout2) == 7
    assert torch.equal(readout2, readout) and readout.abs().sum() > 0
    assert torch.equal(opt2.state[readout2]["exp_avg"], opt.state[readout]["exp_avg"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cached_layers_are_causal_with_any_attention(tmp_path, attn):
    """Regression: _run_layers passed attention_mask=None; with eager attention every token saw
    the future. A prefix must give the same hidden states as the full sequence at its positions."""
    from transformers import AutoModelForCausalLM

    from cliff_lens.organism.build import _run_layers

    d = tiny_hf_model_dir(tmp_path / "m", vocab_size=300)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation=attn)
    inner = model.model
    ids = torch.randint(10, 300, (1, 12))
    full = _run_layers(inner, inner.embed_tokens(ids), inner.layers)
    prefix = _run_layers(inner, inner.embed_tokens(ids[:, :5]), inner.layers)
    torch.testing.assert_close(full[:, :5], prefix, atol=1e-5, rtol=1e-5)
