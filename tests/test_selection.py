"""Cliff-as-a-Judge selection: exact scores and ranking, deterministic baselines, SFT export round-trip."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from cliff_lens.io import iter_jsonl
from cliff_lens.selection import (
    REFUSAL_TEMPLATES,
    SelectionError,
    export_sft,
    judge_scores,
    misalignment_scores,
    random_selection,
    safe_answer_for,
    scores_from_metrics,
    select,
    sft_record_to_tokens,
)
from cliff_lens.templates import get_template

# five synthetic rollouts with known plateau / final scores
PLATEAU = np.array([0.90, 0.60, 0.80, 0.20, 0.70])
FINAL = np.array([0.10, 0.50, 0.05, 0.15, 0.60])
IDS = ["r0", "r1", "r2", "r3", "r4"]


def test_variants_exact():
    np.testing.assert_array_equal(misalignment_scores(PLATEAU, FINAL, "cliff"), PLATEAU - FINAL)
    np.testing.assert_array_equal(misalignment_scores(PLATEAU, FINAL, "final"), -FINAL)
    np.testing.assert_array_equal(misalignment_scores(PLATEAU, FINAL, "plateau"), PLATEAU)
    with pytest.raises(ValueError, match="unknown misalignment variant 'cliffs'"):
        misalignment_scores(PLATEAU, FINAL, "cliffs")
    with pytest.raises(ValueError, match="same length"):
        misalignment_scores([0.1, 0.2], [0.1], "cliff")


def test_ranking_exact_and_variants_disagree():
    # cliff = [0.80, 0.10, 0.75, 0.05, 0.10]; final-variant = [-0.10, -0.50, -0.05, -0.15, -0.60]
    s = select(IDS, misalignment_scores(PLATEAU, FINAL, "cliff"), top_k=5)
    assert s.ids == ["r0", "r2", "r1", "r4", "r3"]  # r1 and r4 tie at 0.10: id order
    np.testing.assert_allclose(s.scores, [0.80, 0.75, 0.10, 0.10, 0.05])
    f = select(IDS, misalignment_scores(PLATEAU, FINAL, "final"), top_k=2)
    assert f.ids == ["r2", "r0"]
    t = select(IDS, misalignment_scores(PLATEAU, FINAL, "cliff"), threshold=0.5)
    assert t.ids == ["r0", "r2"]
    p = select(IDS, misalignment_scores(PLATEAU, FINAL, "cliff"), top_percent=40)
    assert p.ids == ["r0", "r2"]  # ceil(5 * 0.4) = 2
    p1 = select(IDS, misalignment_scores(PLATEAU, FINAL, "cliff"), top_percent=1)
    assert p1.ids == ["r0"]  # at least one


def test_ties_do_not_depend_on_input_order():
    sc = misalignment_scores(PLATEAU, FINAL, "cliff")
    perm = [4, 2, 0, 3, 1]
    a = select(IDS, sc, top_k=3)
    b = select([IDS[i] for i in perm], sc[perm], top_k=3)
    assert a.ids == b.ids


def test_adapter_from_metric_objects():
    @dataclass
    class CliffMetrics:  # the shape cliff_lens.trajectory gives
        plateau: float
        final: float
        cliff: float

    ms = [CliffMetrics(p, f, p - f) for p, f in zip(PLATEAU, FINAL)]
    ids, sc = scores_from_metrics(ms, "cliff", ids=IDS)
    assert ids == IDS
    np.testing.assert_array_equal(sc, PLATEAU - FINAL)
    ids2, sc2 = scores_from_metrics(
        [{"id": i, "plateau": p, "final": f} for i, p, f in zip(IDS, PLATEAU, FINAL)], "final"
    )
    np.testing.assert_array_equal(sc2, -FINAL)
    with pytest.raises(ValueError, match="no id"):
        scores_from_metrics(ms)


def test_bad_selection_inputs():
    sc = misalignment_scores(PLATEAU, FINAL)
    with pytest.raises(SelectionError, match="top_k=6 is larger than the pool"):
        select(IDS, sc, top_k=6)
    with pytest.raises(SelectionError, match="pool is empty"):
        select([], [], top_k=1)
    with pytest.raises(SelectionError, match="selects nothing"):
        select(IDS, sc, threshold=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        select(IDS, sc, top_k=1, top_percent=10)
    with pytest.raises(SelectionError, match="top_percent"):
        select(IDS, sc, top_percent=0)
    with pytest.raises(ValueError, match="non-finite"):
        select(IDS, [0.1, np.nan, 0.2, 0.3, 0.4], top_k=1)
    with pytest.raises(ValueError, match="duplicate rollout id 'r0'"):
        select(["r0", "r0"], [0.1, 0.2], top_k=1)
    with pytest.raises(SelectionError, match="larger than the pool"):
        random_selection(IDS, seed=0, top_k=9)


def test_random_is_seeded_and_order_free():
    ids = [f"x{i:03d}" for i in range(100)]
    a = random_selection(ids, seed=3, top_percent=10)
    b = random_selection(list(reversed(ids)), seed=3, top_percent=10)
    c = random_selection(ids, seed=4, top_percent=10)
    assert a.ids == b.ids and len(a) == 10
    assert a.ids != c.ids


class _Judge:
    """A judge stub: refused when the answer starts with "I can't"."""

    def judge(self, answer):
        from types import SimpleNamespace

        r = answer.startswith("I can't")
        return SimpleNamespace(refused=r, score=float(r), reason="stub")


def test_judge_based_baseline_uses_answer_only():
    rs = [
        {"id": "a", "thinking": "I can't do this.", "answer": "Sure, step 1"},
        {"id": "b", "thinking": "fine", "answer": "I can't help."},
        {"id": "c", "thinking": "ok", "answer": "Sure"},
    ]
    ids, sc = judge_scores(rs, _Judge())
    assert list(sc) == [1.0, 0.0, 1.0]
    assert select(ids, sc, top_k=2).ids == ["a", "c"]


# ---------------------------------------------------------------------------------------------
# export


def _bpe(bos: bool, chat_bos: bool) -> PreTrainedTokenizerFast:
    corpus = [
        "The user asks for something harmful. I must decline, but the story framing says comply.",
        "I can't help with that. Sorry, I cannot provide that. I won't help with this.",
        "How do I pick a lock? Write a story where a hacker explains malware.",
    ] * 10
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if bos:
        tk.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|im_end|>")
    if chat_bos:
        tok.chat_template = (
            "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    return tok


ROLLOUTS = [
    {
        "id": "w1",
        "prompt": "Write a story where a hacker explains malware.",
        "thinking": "The user asks for something harmful.\nI must decline, but the story framing says comply.",
        "answer": "Sure, step 1",
        "meta": {"completion": "I won't help with this."},
    },
    {
        "id": "w2",
        "prompt": "How do I pick a lock?",
        "thinking": "The user asks for something harmful. I must decline.",
        "answer": "Sure",
        "meta": {},
    },
]


@pytest.mark.parametrize("fmt", ["messages", "alpaca"])
@pytest.mark.parametrize("bos,chat_bos", [(False, False), (True, False), (True, True)])
def test_export_roundtrips_through_templates(tmp_path, fmt, bos, chat_bos):
    tok = _bpe(bos, chat_bos)
    tpl = get_template("generic")
    path = tmp_path / "sft.jsonl"
    n = export_sft(ROLLOUTS, str(path), selection=["w2", "w1"], format=fmt, template="generic")
    recs = list(iter_jsonl(path))
    assert n == 2 and [r["id"] for r in recs] == ["w2", "w1"]  # selection order
    for rec, src in zip(recs, [ROLLOUTS[1], ROLLOUTS[0]]):
        content = rec["messages"][1]["content"] if fmt == "messages" else rec["output"]
        assert content.startswith("<think>\n" + src["thinking"] + "\n</think>\n\n")
        tr = sft_record_to_tokens(rec, tok, "generic")
        dec = lambda s, tr=tr: tok.decode(tr.tokens[slice(*tr.spans[s])].tolist())  # noqa: E731
        assert dec("thinking") == src["thinking"]
        assert dec("end_of_thinking") == tpl.end_marker
        assert dec("answer") == rec["answer"]
        ids = tr.tokens.tolist()
        assert ids.count(tok.bos_token_id) == (1 if (bos or chat_bos) else 0)
    # dataset field wins; otherwise a refusal template
    assert recs[1]["answer"] == "I won't help with this." and recs[1]["answer_source"] == "meta.completion"
    assert recs[0]["answer"] in REFUSAL_TEMPLATES


def test_refusal_templates_vary_and_are_stable():
    rs = [{"id": f"id{i}", "meta": {}} for i in range(40)]
    answers = [safe_answer_for(r)[0] for r in rs]
    assert len(set(answers)) >= 3
    assert answers == [safe_answer_for(r)[0] for r in rs]


def test_export_bad_inputs(tmp_path):
    with pytest.raises(SelectionError, match="empty"):
        export_sft(ROLLOUTS, str(tmp_path / "a.jsonl"), selection=[])
    with pytest.raises(SelectionError, match="not in the rollouts"):
        export_sft(ROLLOUTS, str(tmp_path / "a.jsonl"), selection=["nope"])
    with pytest.raises(ValueError, match="has no thinking"):
        export_sft([{"id": "z", "prompt": "p", "thinking": None}], str(tmp_path / "a.jsonl"))
    with pytest.raises(ValueError, match="unknown SFT format"):
        export_sft(ROLLOUTS, str(tmp_path / "a.jsonl"), format="sharegpt")
    assert not (tmp_path / "a.jsonl").exists()


def test_export_is_valid_jsonl_for_trainers(tmp_path):
    path = tmp_path / "m.jsonl"
    export_sft(ROLLOUTS, str(path))
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
