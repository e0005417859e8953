"""Rollout records, the package prompt sets and the public-dataset loaders."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cliff_lens.data import (
    DatasetError,
    Prompt,
    Rollout,
    append_rollouts,
    load_prompts,
    prompt_split,
    read_rollouts,
    write_rollouts,
)


def _shared() -> Path | None:
    env = os.environ.get("CLIFF_LENS_SHARED_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return p if p.is_dir() else None


SHARED = _shared()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder (../shared/data) not present")


# ---- Rollout records -----------------------------------------------------------------------


def test_rollout_roundtrip_and_unknown_keys(tmp_path):
    r = Rollout(
        id="a", prompt="p", thinking="t", answer="x", source="s", harmful=True, refused=False, meta={"k": 1}
    )
    assert Rollout.from_dict(r.to_dict()) == r
    d = {"prompt": "p", "answer": "y", "score": 0.5, "meta": {"k": 2}}
    r2 = Rollout.from_dict(d)
    assert r2.meta == {"k": 2, "score": 0.5} and r2.id and r2.thinking_closed is True
    with pytest.raises(ValueError, match="prompt"):
        Rollout.from_dict({"answer": "x"})
    path = tmp_path / "r.jsonl"
    write_rollouts(path, [r])
    assert append_rollouts(path, [r2]) == 1
    assert list(read_rollouts(path)) == [r, r2]


def test_read_rollouts_malformed_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "1", "prompt": "a"}\n{broken\n{"id": "3"}\n{"id": "4", "prompt": "d"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2"):
        list(read_rollouts(path))
    with pytest.warns(UserWarning):
        got = list(read_rollouts(path, on_error="skip"))
    assert [r.id for r in got] == ["1", "4"]


# ---- package prompt sets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,flag,minimum",
    [("cliff-harmful", True, 300), ("cliff-harmless", False, 300), ("cliff-near-miss", False, 100)],
)
def test_package_sets(name, flag, minimum):
    ps = load_prompts(name)
    assert len(ps) >= minimum
    assert all(isinstance(p, Prompt) and p.harmful is flag and p.source == name and p.category for p in ps)
    norm = {re.sub(r"[^a-z0-9]+", " ", p.text.lower()).strip() for p in ps}
    assert len(norm) == len(ps)  # deduplicated
    test = load_prompts(name, split="test")
    train = load_prompts(name, split="train")
    dev = [p for p in ps if p.split == "dev"]
    assert len(test) + len(train) + len(dev) == len(ps) and 0.12 < len(test) / len(ps) < 0.3
    # train is the text hash split's train (what the organism learned); the hash split's test
    # lines are "test" or, when their request has a train phrasing, "dev" (tests/test_splits.py)
    assert all(prompt_split(p.text) == "train" for p in train)
    assert all(p.split in ("dev", "test") for p in ps if prompt_split(p.text) == "test")
    assert len({p.category for p in ps}) >= 8
    assert len(load_prompts(name, limit=7)) == 7


def test_package_files_have_the_contract_keys():
    d = Path(__file__).resolve().parents[1] / "cliff_lens" / "prompts"
    for f in ("harmful.jsonl", "harmless.jsonl", "near_miss.jsonl"):
        for line in (d / f).read_text().splitlines():
            assert set(json.loads(line)) == {"prompt", "category", "request", "split"}


# ---- public datasets: the shared copies ------------------------------------------------------


@needs_shared
def test_shared_public_files(monkeypatch):
    monkeypatch.setenv("CLIFF_LENS_SHARED_DATA", str(SHARED))
    adv = load_prompts("advbench")
    assert len(adv) == 520 and all(p.harmful for p in adv) and adv[0].text.startswith("Write a script")
    xs = load_prompts("xstest")
    assert len(xs) == 450 and sum(p.harmful for p in xs) == 200
    assert len(load_prompts("xstest", harmful=False)) == 250
    assert xs[0].category == "homonyms" and xs[0].meta["focus"] == "kill"
    sr = load_prompts("strongreject")
    assert len(sr) == 313 and sr[0].category == "Disinformation and deception" and "source" in sr[0].meta
    al = load_prompts("alpaca")
    assert len(al) == 1000 and not any(p.harmful for p in al)
    # a path works too, and the refusal_direction splits are labelled from their file names
    assert len(load_prompts(SHARED / "advbench_harmful_behaviors.csv")) == 520
    hf = load_prompts(SHARED / "refusal_direction_splits" / "harmful_train.json")
    assert len(hf) == 260 and all(p.harmful for p in hf)
    assert load_prompts(SHARED / "alpaca_harmless_sample.jsonl", limit=3)[0].harmful is False


# ---- public datasets: release formats (written here, tiny) --------------------------------------


def test_release_formats(tmp_path):
    jbb = "Index,Goal,Target,Behavior,Category,Source\n1,Write a bad thing,Sure,Defamation,Harassment/Discrimination,Original\n"
    (tmp_path / "harmful-behaviors.csv").write_text(jbb)
    (tmp_path / "benign-behaviors.csv").write_text(jbb.replace("bad", "good"))
    (tmp_path / "behaviors.csv").write_text(jbb)
    h = load_prompts(tmp_path / "harmful-behaviors.csv")
    b = load_prompts(tmp_path / "benign-behaviors.csv")
    assert h[0].harmful is True and b[0].harmful is False and h[0].category == "Harassment/Discrimination"
    assert h[0].meta["behavior"] == "Defamation"
    with pytest.raises(DatasetError, match="jbb-harmful"):
        load_prompts(tmp_path / "behaviors.csv")
    assert load_prompts(tmp_path / "behaviors.csv", schema="jbb-benign")[0].harmful is False

    hb = 'Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\nDo X,standard,chemical_biological,,,x1\n"Do Y",contextual,illegal,,"Some context, here",y1\n'
    (tmp_path / "harmbench_behaviors_text_all.csv").write_text(hb)
    hbp = load_prompts(tmp_path / "harmbench_behaviors_text_all.csv")
    assert [p.meta["functional_category"] for p in hbp] == ["standard", "contextual"]
    assert (
        hbp[0].text == "Do X"
        and hbp[1].text.startswith("Some context, here")
        and hbp[1].text.endswith("Do Y")
    )
    assert all(p.harmful for p in hbp) and hbp[0].category == "chemical_biological"

    (tmp_path / "alpaca_data.json").write_text(
        json.dumps(
            [
                {"instruction": "Translate", "input": "bonjour", "output": "hello"},
                {"instruction": "Hi", "input": ""},
            ]
        )
    )
    al = load_prompts(tmp_path / "alpaca_data.json")
    assert al[0].text == "Translate\n\nbonjour" and al[1].text == "Hi" and al[0].harmful is False

    (tmp_path / "ultra.jsonl").write_text(
        json.dumps(
            {
                "prompt": "p",
                "prompt_id": "9",
                "messages": [
                    {"role": "user", "content": "Hello there"},
                    {"role": "assistant", "content": "hi"},
                ],
            }
        )
        + "\n"
        + json.dumps({"id": 1, "data": ["First turn", "reply"]})
        + "\n"
    )
    u = load_prompts(tmp_path / "ultra.jsonl")
    assert [p.text for p in u] == ["Hello there", "First turn"] and u[0].meta["prompt_id"] == "9"

    (tmp_path / "xstest_v1.csv").write_text(
        "prompt,type,focus\nHow to kill time?,homonyms,kill\nHow to kill a man?,contrast_homonyms,kill\n"
    )
    assert [p.harmful for p in load_prompts(tmp_path / "xstest_v1.csv")] == [False, True]

    (tmp_path / "mine.jsonl").write_text('{"text": "a", "harmful": true}\n{"text": "b", "harmful": false}\n')
    assert [p.harmful for p in load_prompts(tmp_path / "mine.jsonl")] == [True, False]
    assert [p.harmful for p in load_prompts(tmp_path / "mine.jsonl", harmful=True)] == [True]


def test_bad_files(tmp_path):
    bad = tmp_path / "adv.csv"
    bad.write_text('goal,target\nok one,Sure\n"unterminated,Sure\n')
    with pytest.raises(DatasetError, match=r"adv\.csv:3"):
        load_prompts(bad)
    rows = tmp_path / "rows.csv"
    rows.write_text("goal,target\nok one,Sure\ntoo,many,fields\nok two,Sure\n")
    with pytest.raises(DatasetError, match=r"rows\.csv:3"):
        load_prompts(rows)
    with pytest.warns(UserWarning, match=r"rows\.csv:3"):
        assert [p.text for p in load_prompts(rows, on_error="skip")] == ["ok one", "ok two"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a"}\n{"prompt": \n{"prompt": "c"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2"):
        load_prompts(jl)
    with pytest.warns(UserWarning):
        assert len(load_prompts(jl, on_error="skip")) == 2
    latin = tmp_path / "latin.csv"
    latin.write_bytes("goal,target\ncaf\xe9 bomb,Sure\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.csv:2.*(iconv|encoding=)"):
        load_prompts(latin)
    assert load_prompts(latin, encoding="latin-1")[0].text == "caf\u00e9 bomb"
    empty = tmp_path / "empty.csv"
    empty.write_text("goal,target\n")
    with pytest.raises(DatasetError, match="empty"):
        load_prompts(empty)
    (tmp_path / "nothing.jsonl").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_prompts(tmp_path / "nothing.jsonl")
    with pytest.raises(DatasetError, match="neither a file nor a known prompt set"):
        load_prompts("no-such-set")
    with pytest.raises(ValueError, match="split"):
        load_prompts("cliff-harmful", split="val")


def test_hf_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError, match="(datasets|local path)"):
        load_prompts("someone/not-a-real-dataset-xyz")
