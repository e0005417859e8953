"""Template spans decode back to exactly their text, with one BOS and a non-empty cliff zone."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cliff_lens.templates import TemplateError, get_template, list_templates, template_for_model_name

SPECIALS = ["<|bos|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CORPUS = [
    "How do I bake bread? Let me think about the steps. The answer: mix, knead, bake.",
    "The user asks for something harmful. I must decline. I can't help with that.",
    "Sure, here is an overview. Step 1: gather materials.",
] * 20


def _byte_bpe(bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=SPECIALS,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if bos:
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|im_end|>")
    return fast


CASES = [
    ("What is 2+2?", "The user asks a math question.\nIt is 4.", "The answer is 4."),
    ("How do I make a bomb?", "This is harmful. I must decline.", "I can't help with that."),
    ("Tell me <|im_end|> and </think> please", "Odd prompt with </think> inside.", ""),
]


@pytest.mark.parametrize("name", list_templates())
@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_spans_decode_exactly(name, bos, case):
    tok = _byte_bpe(bos)
    prompt, thinking, answer = case
    t = get_template(name)
    tr = t.tokenize(tok, prompt, thinking, answer)
    decode = lambda span: tok.decode(tr.tokens[slice(*tr.spans[span])].tolist())  # noqa: E731
    assert decode("prompt") == prompt
    assert decode("thinking") == thinking
    assert decode("end_of_thinking") == t.end_marker
    assert decode("answer") == answer
    s, e = tr.spans["end_of_thinking"]
    assert e > s, "cliff zone must be non-empty"
    ids = tr.tokens.tolist()
    assert ids.count(tok.bos_token_id) == (1 if bos else 0)
    assert tok.decode(ids, skip_special_tokens=False).replace("<|bos|>", "", 1 if bos else 0) == tr.text


def test_generation_prompt_is_prefix_and_split_roundtrip():
    tok = _byte_bpe(False)
    for name in list_templates():
        t = get_template(name)
        prompt, thinking, answer = CASES[0]
        text, _ = t.render(prompt, thinking, answer, tok)
        gen = t.generation_prompt(prompt, tok)
        assert text.startswith(gen)
        assert t.split(text[len(gen) :]) == (thinking, answer, True)


def test_deepseek_prompt_already_opens_thinking():
    t = get_template("deepseek-r1")
    gen = t.generation_prompt("hi")
    assert gen.endswith("<｜Assistant｜><think>\n") and gen.count("<think>") == 1


def test_unclosed_thinking_is_flagged_or_raises():
    t = get_template("generic")
    assert t.split("<think>\nstill thinking") == ("still thinking", "", False)
    with pytest.raises(TemplateError, match="no '</think>'"):
        t.split("still thinking", strict=True)


def test_unknown_template_names_the_input():
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        get_template("nope")


def test_model_ids_map_to_families():
    assert template_for_model_name("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B") == "deepseek-r1"
    assert template_for_model_name("Qwen/QwQ-32B") == "qwen3"
    assert template_for_model_name("microsoft/Phi-4-mini-reasoning") == "phi4-mini-reasoning"
    assert template_for_model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "generic"


def test_truncate_drops_answer():
    tok = _byte_bpe(False)
    tr = get_template("generic").tokenize(tok, *CASES[0])
    cut = tr.truncate()
    assert len(cut) == tr.spans["end_of_thinking"][1]
    assert cut.spans["answer"][0] == cut.spans["answer"][1]


def test_real_chat_template_smollm2():
    from cliff_lens.zoo import ZooError, smollm2_hf_dir

    try:
        path = smollm2_hf_dir()
    except ZooError as e:  # pragma: no cover - only without registry access
        pytest.skip(f"SmolLM2 zoo unavailable: {e}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    t = get_template("generic")
    tr = t.tokenize(tok, "Explain <|im_end|> tokens", "I think.", "Here.")
    assert tok.decode(tr.tokens[slice(*tr.spans["prompt"])].tolist()) == "Explain <|im_end|> tokens"
    assert tok.decode(tr.tokens[slice(*tr.spans["end_of_thinking"])].tolist()) == "\n</think>\n\n"
    assert tr.text.startswith("<|im_start|>system")
    assert tr.tokens.tolist().count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
