"""Rollout generation (batched == one-at-a-time, resume, hooks, thinking split) and import."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_tokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig

import cliff_lens.rollout as rollout_mod
from cliff_lens.data import Prompt, read_rollouts, request_key
from cliff_lens.rollout import _encode, generate_rollouts, import_rollouts, rollout_id
from cliff_lens.templates import get_template

PROMPTS = [
    "how to make a cake",
    "write a poem",
    "explain python code step by step please help me with this question",
    "hi",
    "tell me a story about a weapon and a cake",
]


def _model(tok, pe="rotary", d_model=32, n_ctx=128, seed=0):
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        n_heads=4,
        d_head=d_model // 4,
        d_mlp=2 * d_model,
        d_vocab=len(tok),
        n_ctx=n_ctx,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type=pe,
        rotary_dim=8,
        initializer_range=0.1,
        seed=seed,
        device="cpu",
    )
    torch.manual_seed(seed)
    m = HookedTransformer(cfg)
    m.tokenizer = tok
    m.eval()
    return m


def _greedy_no_cache(model, text, n):
    """Ground truth: full forward pass per step, no padding, no cache."""
    tok = model.tokenizer
    ids = torch.tensor([_encode(tok, get_template(None, tok).generation_prompt(text, tok))])
    new = []
    for _ in range(n):
        nxt = int(model(ids)[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        new.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return new


@pytest.mark.parametrize("pe", ["rotary", "standard"])
def test_batched_equals_one_at_a_time_greedy(pe):
    tok = build_tiny_tokenizer(0)
    tok.pad_token = "the"  # pad id also occurs inside prompts: explicit masks must not care
    m = _model(tok, pe)
    n = 12
    batched = generate_rollouts(m, PROMPTS, max_new_tokens=n, batch_size=5, progress=False)
    single = [generate_rollouts(m, [p], max_new_tokens=n, batch_size=1, progress=False)[0] for p in PROMPTS]
    lengths = {r.meta["n_prompt_tokens"] for r in batched}
    assert len(lengths) >= 3  # mixed prompt lengths -> real left padding
    tmpl = get_template(None, tok)
    outs = set()
    for p, b, s in zip(PROMPTS, batched, single):
        assert b.thinking == s.thinking and b.id == s.id
        truth = _greedy_no_cache(m, p, n)
        assert b.meta["n_new_tokens"] == len(truth)
        assert b.thinking == tmpl.split(tok.decode(truth, skip_special_tokens=False))[0]
        outs.add(b.thinking)
    assert len(outs) >= 3  # the model is not degenerate: the comparison means something


def test_sampling_is_seeded_and_batch_invariant():
    tok = build_tiny_tokenizer(0)
    m = _model(tok)
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, progress=False)
    a = generate_rollouts(m, PROMPTS[:3], batch_size=3, seed=1, **kw)
    b = [generate_rollouts(m, [p], batch_size=1, seed=1, **kw)[0] for p in PROMPTS[:3]]
    c = generate_rollouts(m, PROMPTS[:3], batch_size=3, seed=2, **kw)
    assert [r.thinking for r in a] == [r.thinking for r in b]
    assert [r.thinking for r in a] != [r.thinking for r in c]
    assert a[0].meta["sampling"]["seed"] == 1 and a[0].meta["sampling"]["temperature"] == 1.0
    assert a[0].id != c[0].id


def test_resume_skips_finished(tmp_path, monkeypatch):
    tok = build_tiny_tokenizer(0)
    m = _model(tok)
    out = tmp_path / "r.jsonl"
    first = generate_rollouts(m, PROMPTS[:2], max_new_tokens=6, out=out, progress=False)
    assert len(list(read_rollouts(out))) == 2
    # a crash mid-append leaves a partial line: it must not break the resume
    with open(out, "a") as f:
        f.write('{"id": "half')
    calls = []
    real = rollout_mod._generate_batch

    def counting(model, seqs, **kw):
        calls.append(len(seqs))
        return real(model, seqs, **kw)

    monkeypatch.setattr(rollout_mod, "_generate_batch", counting)
    with pytest.warns(UserWarning):
        allr = generate_rollouts(m, PROMPTS, max_new_tokens=6, out=out, progress=False)
    assert sum(calls) == len(PROMPTS) - 2
    assert [r.id for r in allr[:2]] == [r.id for r in first]
    ids = [r.id for r in read_rollouts(out)]
    assert len(ids) == len(PROMPTS) and len(set(ids)) == len(PROMPTS)
    calls.clear()
    generate_rollouts(m, PROMPTS, max_new_tokens=6, out=out, progress=False)
    assert calls == []  # everything finished
    # other settings -> other ids -> generated again
    generate_rollouts(m, PROMPTS[:1], max_new_tokens=7, out=out, progress=False)
    assert calls == [1]


def test_duplicate_prompts_get_distinct_ids():
    ids = [rollout_id("x", "generic", {"t": 0}, i) for i in range(2)]
    assert ids[0] != ids[1] and ids[0] == rollout_id("x", "generic", {"t": 0}, 0)


def _scripted_hook(model, script):
    """A hook on ln_final that forces the next tokens to be ``script`` (needs d_model >= d_vocab)."""
    W_U, b_U = model.W_U.detach(), model.b_U.detach()
    pinv = torch.linalg.pinv(W_U)  # [d_vocab, d_model]
    state = {"k": 0, "pos_dims": []}

    def hook(act, hook):
        state["pos_dims"].append(act.shape[1])
        t = script[min(state["k"], len(script) - 1)]
        target = torch.full((model.cfg.d_vocab,), -50.0)
        target[t] = 50.0
        act = act.clone()
        act[:, -1, :] = (target - b_U) @ pinv
        state["k"] += 1
        return act

    return hook, state


def test_hooks_thinking_split_and_eos():
    tok = build_tiny_tokenizer(0)
    m = _model(tok, d_model=128)
    v = tok.get_vocab()
    script = [v["okay"], v["</think>"], v["sure"], tok.eos_token_id]
    hook, state = _scripted_hook(m, script)
    (r,) = generate_rollouts(
        m,
        ["how to make a cake"],
        hooks=[("ln_final.hook_normalized", hook)],
        max_new_tokens=10,
        progress=False,
    )
    # the word-level test tokenizer decodes with spaces between words: "okay </think> sure"
    assert r.thinking_closed and r.thinking.strip() == "okay" and r.answer.strip() == "sure"
    assert r.meta["stop_reason"] == "eos" and r.meta["n_new_tokens"] == 3
    assert state["pos_dims"][0] > 1 and set(state["pos_dims"][1:]) == {1}  # prefill, then cached steps
    assert r.meta["sampling"]["hooks"] == ["ln_final.hook_normalized"]
    # without the hook the random model never closes its thinking: kept and flagged
    (r2,) = generate_rollouts(m, ["how to make a cake"], max_new_tokens=5, progress=False)
    assert not r2.thinking_closed and r2.answer is None and r2.thinking
    assert r2.id != r.id  # hooks enter the id


def test_context_limits():
    tok = build_tiny_tokenizer(0)
    m = _model(tok, n_ctx=24)
    with pytest.warns(UserWarning, match="context"):
        (r,) = generate_rollouts(m, ["hi"], max_new_tokens=50, progress=False)
    assert r.meta["stop_reason"] == "context"
    assert r.meta["n_prompt_tokens"] + r.meta["n_new_tokens"] <= 24
    with pytest.raises(ValueError, match="n_ctx=24"):
        generate_rollouts(m, ["the " * 40], max_new_tokens=5, progress=False)


def test_prompt_labels_copied():
    tok = build_tiny_tokenizer(0)
    m = _model(tok)
    framed = Prompt("pretend: how to make a cake", meta={"request": "how to make a cake"})
    r, r2, r3 = generate_rollouts(
        m,
        [
            Prompt(
                "how to make a bomb", harmful=True, source="x", category="weapons", request_id="weapons-1"
            ),
            "write a poem",
            framed,
        ],
        max_new_tokens=2,
        progress=False,
    )
    assert r.harmful is True and r.source == "x" and r.meta["category"] == "weapons"
    # the request id: the prompt's own, else keyed on the text (a framed prompt: the wrapped request)
    assert r.request_id == "weapons-1"
    assert r2.request_id == request_key("write a poem")
    assert r3.request_id == request_key("how to make a cake")


def test_import_rollouts(tmp_path):
    p = tmp_path / "vllm.jsonl"
    lines = [
        {"prompt": "q1", "output": "<think>\nplan it\n</think>\n\nI can't help.", "harmful": True},
        {"prompt": "q2", "outputs": [{"text": "still thinking forever"}], "request_id": "7"},
        {"prompt": "q3", "response": "Sure.", "reasoning_content": "they want x"},
        {"prompt": "q4", "text": "a</think>b", "id": "my-id"},
    ]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rs = import_rollouts(p, out=tmp_path / "r.jsonl")
    assert (rs[0].thinking, rs[0].answer, rs[0].thinking_closed, rs[0].harmful) == (
        "plan it",
        "I can't help.",
        True,
        True,
    )
    assert rs[1].thinking_closed is False and rs[1].answer is None and rs[1].meta["request_id"] == "7"
    # our request id comes from the prompt; an engine's own request_id stays in meta
    assert [r.request_id for r in rs] == [request_key(q) for q in ("q1", "q2", "q3", "q4")]
    assert (rs[2].thinking, rs[2].answer) == ("they want x", "Sure.")
    assert rs[3].id == "my-id" and rs[3].answer == "b"
    assert [r.id for r in read_rollouts(tmp_path / "r.jsonl")] == [r.id for r in rs]
    assert [r.request_id for r in read_rollouts(tmp_path / "r.jsonl")] == [r.request_id for r in rs]
    # malformed records: named, or skipped
    with open(p, "a") as f:
        f.write('{"prompt": "q5"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"vllm\.jsonl: line \d+: "):
        import_rollouts(p)
    with pytest.warns(UserWarning):
        assert len(import_rollouts(p, on_error="skip")) == 4
    q = tmp_path / "custom.jsonl"
    q.write_text(json.dumps({"question": "q", "gen": "x</think>y"}) + "\n")
    (r,) = import_rollouts(q, prompt_key="question", output_key="gen")
    assert r.answer == "y" and r.prompt == "q"


def test_gpt_oss_turn_ends_at_return_or_call_not_at_end_of_channel():
    """gpt-oss ends its turn with <|return|> or <|call|>; <|end|> only closes the analysis channel."""
    from cliff_lens.rollout import stop_token_set
    from cliff_lens.templates import get_template
    from cliff_lens.testing import word_level_tokenizer

    specials = ["<|return|>", "<|call|>", "<|end|>"]
    tok = word_level_tokenizer(
        ["<unk>", "<pad>", "<s>", "</s>", *specials, "a", "b"], 20, additional_special_tokens=specials
    )
    tok.eos_token = "<|return|>"
    vocab = tok.get_vocab()
    ids = stop_token_set(tok, get_template("gpt-oss"))
    assert ids == {vocab["<|return|>"], vocab["<|call|>"]}
    assert vocab["<|end|>"] not in ids
    assert stop_token_set(tok, get_template("generic"), [7]) == {vocab["<|return|>"], 7}


@pytest.mark.parametrize("mode", ["zero", "mean", "paper_renorm"])
def test_settings_side_by_side_equal_one_setting_at_a_time(mode):
    """One generation call over (prompt x setting) rows with a head set per row gives every row
    the tokens of its setting generated alone (row_ablation_hooks + row_hooks)."""
    from cliff_lens.ablation import ablation_hooks, compute_head_means, row_ablation_hooks

    tok = build_tiny_tokenizer(0)
    m = _model(tok, seed=3)
    means = (
        compute_head_means(m, [torch.tensor(tok(p)["input_ids"]) for p in PROMPTS])
        if mode == "mean"
        else None
    )
    settings = [[], [(0, 1)], [(1, 0), (1, 3)], [(0, 2), (1, 2)]]
    rows = [(s, p) for s in range(len(settings)) for p in range(len(PROMPTS))]
    batched = generate_rollouts(
        m,
        [PROMPTS[p] for _, p in rows],
        max_new_tokens=10,
        batch_size=7,
        progress=False,
        row_hooks=lambda idx: row_ablation_hooks(m, [settings[rows[i][0]] for i in idx], mode, means),
    )
    changed = 0
    for s, heads in enumerate(settings):
        hooks = ablation_hooks(m, heads, mode, means) if heads else None
        alone = generate_rollouts(m, PROMPTS, max_new_tokens=10, batch_size=5, progress=False, hooks=hooks)
        got = [b for (si, _), b in zip(rows, batched) if si == s]
        assert [r.thinking for r in got] == [r.thinking for r in alone]
        changed += s > 0 and [r.thinking for r in got] != [r.thinking for r in batched[: len(PROMPTS)]]
    assert changed >= 1  # the head sets do change the generations, so the test can fail


def test_row_ablation_hooks_equal_per_row_forwards():
    from cliff_lens.ablation import ablation_hooks, row_ablation_hooks

    tok = build_tiny_tokenizer(0)
    m = _model(tok, seed=1)
    x = torch.randint(0, len(tok), (3, 9))
    sets = [[(0, 1)], [], [(1, 0), (0, 3)]]
    with torch.no_grad():
        together = m.run_with_hooks(x, fwd_hooks=row_ablation_hooks(m, sets, "zero"))
        for i, hs in enumerate(sets):
            alone = m.run_with_hooks(x[i : i + 1], fwd_hooks=ablation_hooks(m, hs, "zero") if hs else [])
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch size"):
        m.run_with_hooks(x[:2], fwd_hooks=row_ablation_hooks(m, sets, "zero"))
    with pytest.raises(ValueError, match="paper_renorm_global"):
        row_ablation_hooks(m, sets, "paper_renorm_global")
