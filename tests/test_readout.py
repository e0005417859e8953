"""The read-out engine: position grammar, padding, batched == one-at-a-time, stop layer, final norm."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import general_tl_model
from transformer_lens import HookedTransformer, HookedTransformerConfig

from cliff_lens.readout import (
    FINAL_NORM_WEIGHTED,
    Batch,
    as_examples,
    final_norm,
    left_pad,
    parse_positions,
    prepare,
    resolve_hook,
    resolve_positions,
    run_batches,
    stop_layer,
)
from cliff_lens.testing import Rec

SPANS = {"prompt": (0, 3), "thinking": (3, 8), "end_of_thinking": (8, 10), "answer": (10, 10)}


def _seqs(n: int = 9, lo: int = 3, hi: int = 20, seed: int = 1, vocab: int = 50) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g)
    return [torch.randint(1, vocab, (int(k),), generator=g) for k in lens]


# ------------------------------------------------------------------ grammar


def test_grammar_canonical_and_old_spellings_mean_the_same():
    n = 10
    r = lambda spec: resolve_positions(spec, n, SPANS).tolist()  # noqa: E731
    assert r("all") == list(range(10))
    assert r("last") == [9]
    assert r("thinking") == [3, 4, 5, 6, 7]
    assert r("last:end_of_thinking") == r("end_of_thinking_last") == [9]
    assert r("last:thinking") == r("thinking_last") == [7]
    assert r(-2) == [8] and r(torch.tensor(4)) == [4]
    assert r([5, 0, -1, 5]) == [5, 0, 9, 5]  # order and repeats kept
    assert r(torch.tensor([1, 2])) == [1, 2]
    assert r((2, 5)) == [2, 3, 4] and r((-3, -1)) == [7, 8] and r((4, 4)) == []
    assert r("answer") == []  # an empty span selects nothing
    kinds = {s: parse_positions(s).kind for s in ("last", 3, "last:thinking", "thinking_last")}
    assert set(kinds.values()) == {"single"}
    assert parse_positions([1, 2]).kind == "fixed"
    assert {parse_positions(s).kind for s in ("all", "thinking", (0, 2))} == {"ragged"}
    assert parse_positions("end_of_thinking_last").canonical == "last:end_of_thinking"


def test_grammar_errors_name_the_example_and_the_fix():
    with pytest.raises(ValueError, match=r"example 2 \(id='x'\).*needs spans.*span information"):
        resolve_positions("thinking", 5, None, index=2, ident="x")
    with pytest.raises(ValueError, match="no span 'cliff'"):
        resolve_positions("cliff", 10, SPANS)
    with pytest.raises(ValueError, match="outside"):
        resolve_positions([10], 10, SPANS)
    with pytest.raises(ValueError, match="outside"):
        resolve_positions((0, 11), 10, SPANS)
    with pytest.raises(ValueError, match="outside"):
        resolve_positions("thinking", 6, SPANS)
    with pytest.raises(ValueError, match="empty"):
        resolve_positions("last:answer", 10, SPANS)
    with pytest.raises(ValueError, match="empty list"):
        parse_positions([])
    with pytest.raises(ValueError, match="not understood"):
        parse_positions("last:")
    with pytest.raises(TypeError, match="ablation"):
        parse_positions(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="not understood"):
        parse_positions(1.5)


# ------------------------------------------------------------------ examples, preparation, padding


def test_as_examples_accepts_every_input_form():
    recs = [Rec(torch.arange(1, 6), {"prompt": (0, 2)}), Rec(torch.arange(1, 4)[None], {"prompt": (0, 1)})]
    ex = as_examples(recs)
    assert [e.tokens.tolist() for e in ex] == [[1, 2, 3, 4, 5], [1, 2, 3]] and ex[1].spans == {
        "prompt": (0, 1)
    }
    assert len(as_examples(torch.zeros(3, 4, dtype=torch.long))) == 3
    assert as_examples([[1, 2], torch.tensor([3])])[0].tokens.dtype == torch.long
    assert len(as_examples(recs[0])) == 1
    with pytest.raises(ValueError, match="empty batch"):
        as_examples([])
    with pytest.raises(TypeError, match="float tokens"):
        as_examples([torch.ones(3)])
    with pytest.raises(ValueError, match="empty token sequence"):
        as_examples([torch.zeros(0, dtype=torch.long)])
    with pytest.raises(ValueError, match="tokenizer"):
        as_examples(["hello"])


def test_prepare_trims_and_truncates_with_shifted_spans():
    m = general_tl_model("RMS")  # n_ctx 64
    rec = Rec(torch.arange(70) % 50, {"prompt": (0, 10), "thinking": (10, 66), "end_of_thinking": (66, 68)})
    with pytest.raises(ValueError, match="n_ctx=64.*truncate='left'"):
        prepare(m, [rec], "end_of_thinking")
    with pytest.warns(UserWarning, match="truncated from the left"):
        (p,), kind = prepare(m, [rec], "end_of_thinking", truncate="left")
    assert kind == "ragged" and p.cut == 4 and p.tokens.numel() == 64  # trimmed after token 67
    assert p.spans == {"prompt": (0, 6), "thinking": (6, 62), "end_of_thinking": (62, 64)}
    assert p.positions.tolist() == [62, 63] and torch.equal(p.tokens, rec.tokens[4:68])
    with pytest.raises(ValueError, match="truncated"):
        prepare(m, [rec], [0, 67], truncate="left")  # a requested position would be cut off
    (q,), _ = prepare(m, [Rec(torch.arange(12), SPANS)], "last:thinking")
    assert q.tokens.numel() == 8 and q.positions.tolist() == [7]  # causal: later tokens dropped
    (u,), _ = prepare(m, [Rec(torch.arange(12), SPANS)], "last:thinking", trim=False)
    assert u.tokens.numel() == 12


def test_left_pad_offsets_and_mask():
    toks, mask, off = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=1)
    assert toks.tolist() == [[5, 6, 7], [1, 1, 8]] and off.tolist() == [0, 2]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    toks, mask, off = left_pad([torch.tensor([5, 6]), torch.tensor([8, 9])])
    assert mask is None and off.tolist() == [0, 0]  # no padding: the plain unpadded forward
    b = Batch([0, 1], *left_pad([torch.tensor([5, 6, 7]), torch.tensor([8, 9])]))
    pos = [torch.tensor([2, 0, 2]), torch.tensor([1])]
    rows, cols, counts = b.gather_index(pos)
    assert cols[0].tolist() == [2, 0, 2] and cols[1, :1].tolist() == [2] and counts.tolist() == [3, 1]
    assert b.position_mask(pos).tolist() == [[True, False, True], [False, False, True]]
    assert b.weights(pos, mean=True).tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]]  # distinct positions


# ------------------------------------------------------------------ the hooked forward


def _learned_ln_model() -> HookedTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HookedTransformerConfig(
            n_layers=3, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_mlp=64, d_vocab=50,
            act_fn="gelu", normalization_type="LN", positional_embedding_type="standard", seed=4,
        )  # fmt: skip
        return HookedTransformer(cfg).eval()


def _read(model, seqs, positions, batch_size, names):
    """Engine read of ``names`` at ``positions`` (one index tensor per sequence): {name: per-example}."""
    got = {n: [None] * len(seqs) for n in names}

    def make_reader(b: Batch):
        rows, cols, counts = b.gather_index([positions[i] for i in b.index])

        def reader(x, hook):
            g = x[rows, cols].cpu()
            for j, i in enumerate(b.index):
                got[hook.name][i] = g[j, : int(counts[j])].clone()

        return reader

    batches = list(run_batches(model, seqs, names, make_reader, batch_size=batch_size))
    return got, batches


@pytest.mark.parametrize("which", ["rotary_gqa_rms", "learned_ln"])
def test_engine_batched_equals_one_at_a_time(which):
    m = general_tl_model("RMS", gqa=True) if which == "rotary_gqa_rms" else _learned_ln_model()
    seqs = _seqs()
    g = torch.Generator().manual_seed(5)
    positions = [torch.randint(0, s.numel(), (3,), generator=g) for s in seqs]
    names = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_post"]
    batched, batches = _read(m, seqs, positions, 4, names)
    assert [len(b.index) for b in batches] == [4, 4, 1]
    assert all(b.attention_mask is not None for b in batches[:2])
    lens = [seqs[i].numel() for b in batches for i in b.index]
    assert lens == sorted(lens, reverse=True)  # length buckets, longest first
    for i, s in enumerate(seqs):
        one, _ = _read(m, [s], [positions[i]], 1, names)
        _, cache = m.run_with_cache(s[None], names_filter=lambda n: n in names)
        for n in names:
            assert (batched[n][i] - one[n][0]).abs().max() < 1e-5, (n, i)
            assert (one[n][0] - cache[n][0, positions[i]]).abs().max() < 1e-5, (n, i)


def test_run_batches_adds_per_batch_hooks_and_keeps_order_without_buckets():
    m = general_tl_model("RMS")
    seqs = _seqs(5)
    seen, zs = [], {}

    def zero_head_0(z, hook):
        z = z.clone()
        z[:, :, 0] = 0
        return z

    def make_reader(b):
        def reader(z, hook):
            zs[tuple(b.index)] = z[:, :, 0].abs().max()

        return reader

    for b in run_batches(
        m, seqs, ["blocks.1.attn.hook_z"], make_reader, batch_size=2, bucket=False,
        hooks=lambda b: [("blocks.1.attn.hook_z", zero_head_0)],
    ):  # fmt: skip
        seen.append(b.index)
    assert seen == [[0, 1], [2, 3], [4]]
    assert all(float(v) == 0 for v in zs.values())  # the intervention ran before the reader


def test_run_batches_removes_only_its_own_hooks_like_run_with_hooks():
    """After each batch the reader and intervention hooks are gone (a names filter and a
    callable filter both), hooks the caller added outside (a permanent one, a plain one and one
    of an enclosing ``model.hooks`` context) stay, as with ``run_with_hooks``; values equal."""
    m = general_tl_model("RMS", gqa=True)
    seqs = _seqs(5)
    outer_calls, perm_calls = [], []
    m.add_perma_hook("blocks.0.hook_resid_post", lambda x, hook: perm_calls.append(1))
    m.add_hook("blocks.1.hook_resid_mid", lambda x, hook: None)
    names = ["blocks.1.attn.hook_z", "blocks.0.hook_resid_post"]

    def counts():
        return {n: (len(hp.fwd_hooks), len(hp.bwd_hooks)) for n, hp in m.hook_dict.items() if hp.fwd_hooks}

    def halve(x, hook):
        return x * 0.5

    got = {}

    def make_reader(b):
        def reader(x, hook):
            got.setdefault(hook.name, {})[tuple(b.index)] = x.clone()
            assert counts() != before  # the hooks are on during the forward

        return reader

    try:
        with m.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: outer_calls.append(1))]):
            before = counts()
            level = m.context_level
            for _ in run_batches(
                m, seqs, names, make_reader, batch_size=2,
                hooks=lambda b: [(lambda n: n.endswith("hook_v"), halve)],
            ):  # fmt: skip
                assert counts() == before and m.context_level == level and not m.is_caching
            assert len(outer_calls) == 3 and len(perm_calls) == 3
        # the same batches through TransformerLens's own run_with_hooks
        for b_index, x in got["blocks.1.attn.hook_z"].items():
            toks, mask, _ = left_pad([seqs[i] for i in b_index])
            ref: dict = {}
            m.run_with_hooks(
                toks, attention_mask=mask, return_type=None,
                fwd_hooks=[(lambda n: n.endswith("hook_v"), halve),
                           ("blocks.1.attn.hook_z", lambda z, hook, ref=ref: ref.setdefault("z", z.clone()))],
            )  # fmt: skip
            assert (ref["z"] - x).abs().max() < 1e-5
    finally:
        m.reset_hooks(including_permanent=True)


def test_stop_layer_and_no_later_blocks_run():
    m = general_tl_model("RMS")
    assert stop_layer(m, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]) == 2
    assert stop_layer(m, ["hook_embed"]) == 0
    assert stop_layer(m, ["ln_final.hook_normalized"]) is None
    assert resolve_hook(m, FINAL_NORM_WEIGHTED).name == "blocks.2.hook_resid_post"
    calls = []
    h = m.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        _read(m, _seqs(3), [torch.tensor([0])] * 3, 2, ["blocks.1.hook_resid_post"])
    finally:
        h.remove()
    assert calls == []


# ------------------------------------------------------------------ the final norm


@pytest.mark.parametrize(
    "norm, extra", [("LN", {}), ("LN", {"final_rms": True}), ("RMS", {}), ("LNPre", {}), ("RMSPre", {})]
)
def test_final_norm_is_the_models_own_ln_final(norm, extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HookedTransformerConfig(
            n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=10, act_fn="gelu",
            normalization_type=norm, seed=0, **extra,
        )  # fmt: skip
        m = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for name in ("w", "b"):
            p = getattr(m.ln_final, name, None)
            if p is not None:
                p.add_(torch.randn_like(p))
    x = 3 * torch.randn(2, 5, 16) + 1
    with torch.no_grad():
        assert (final_norm(m, x) - m.ln_final(x)).abs().max() < 1e-6
    if norm in ("LNPre", "RMSPre"):
        with pytest.raises(ValueError, match="fold_ln=False"):
            resolve_hook(m, FINAL_NORM_WEIGHTED)


def test_final_norm_needs_a_final_norm():
    m = general_tl_model("RMS")
    m.cfg.normalization_type = None
    ln = m.ln_final
    del m.ln_final
    try:
        with pytest.raises(ValueError, match="final norm"):
            final_norm(m, torch.randn(2, 32))
        with pytest.raises(ValueError, match="needs a final norm"):
            resolve_hook(m, FINAL_NORM_WEIGHTED)
    finally:
        m.ln_final = ln
        m.cfg.normalization_type = "RMS"


# ------------------------------------------------------------------ one engine, no private cross-imports


def test_readers_import_no_private_helpers_of_other_modules():
    pkg = Path(__file__).resolve().parents[1] / "cliff_lens"
    for mod in ("readout", "activations", "trajectory", "ablation", "scoring"):
        text = (pkg / f"{mod}.py").read_text()
        for m in re.finditer(r"^from (?:cliff_lens)?\.(\w+) import (\([^)]*\)|[^\n]*)", text, re.M):
            names = [n.strip().split(" as ")[0] for n in m.group(2).strip("()").split(",") if n.strip()]
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{mod}.py imports private {private} from {m.group(1)}"
