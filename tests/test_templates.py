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


def _byte_bpe(
    bos: bool, specials: list[str] = SPECIALS, eos: str = "<|im_end|>", chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on CORPUS; ``specials[0]`` is the BOS token (prepended
    when ``bos``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if bos:
        from tokenizers.processors import TemplateProcessing

        tok.post_processor = TemplateProcessing(single=f"{specials[0]} $A", special_tokens=[(specials[0], 0)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[0], eos_token=eos, additional_special_tokens=specials[1:]
    )
    fast.chat_template = chat_template
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


# -- the reasoning families' own chat templates, token for token -------------------------------
# Each template below is the published one cut down to what a single user turn (plus, where the
# template renders it, the assistant's thinking) exercises: same strings, same control flow.

GPT_OSS_TEMPLATE = (  # openai/gpt-oss-20b chat_template.jinja (no tools)
    "{%- macro build_system_message() -%}"
    "{%- if model_identity is not defined %}"
    '{%- set model_identity = "You are ChatGPT, a large language model trained by OpenAI." %}{%- endif %}'
    '{{- model_identity + "\\n" }}{{- "Knowledge cutoff: 2024-06\\n" }}'
    '{{- "Current date: " + strftime_now("%Y-%m-%d") + "\\n\\n" }}'
    '{%- if reasoning_effort is not defined %}{%- set reasoning_effort = "medium" %}{%- endif %}'
    '{{- "Reasoning: " + reasoning_effort + "\\n\\n" }}'
    '{{- "# Valid channels: analysis, commentary, final. Channel must be included for every message." }}'
    "{%- endmacro -%}"
    '{{- "<|start|>system<|message|>" }}{{- build_system_message() }}{{- "<|end|>" }}'
    '{%- if messages[0].role == "developer" or messages[0].role == "system" %}'
    "{%- set developer_message = messages[0].content %}{%- set loop_messages = messages[1:] %}"
    '{%- else %}{%- set developer_message = "" %}{%- set loop_messages = messages %}{%- endif %}'
    '{%- if developer_message %}{{- "<|start|>developer<|message|>" }}{{- "# Instructions\\n\\n" }}'
    '{{- developer_message }}{{- "\\n\\n" }}{{- "<|end|>" }}{%- endif %}'
    "{%- for message in loop_messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- if loop.last and not add_generation_prompt %}"
    '{%- if "thinking" in message %}'
    '{{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" }}{%- endif %}'
    '{{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|return|>" }}'
    '{%- else %}{{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|end|>" }}{%- endif %}'
    "{%- elif message.role == 'user' -%}"
    '{{- "<|start|>user<|message|>" + message.content + "<|end|>" }}'
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)
HARMONY_SPECIALS = [
    "<|startoftext|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
    "<|call|>",
]

QWEN3_THINKING_TEMPLATE = (  # Qwen/Qwen3-*-Thinking-2507 (no tools)
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}"
    "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- set content = message.content %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

OLMO3_THINK_TEMPLATE = (  # allenai/Olmo-3-7B-Think (no functions)
    "{% set has_system = messages|selectattr('role', 'equalto', 'system')|list|length > 0 %}"
    "{% if not has_system %}{{ '<|im_start|>system\\nYou are Olmo, a helpful AI assistant built by Ai2. "
    "Your date cutoff is December 2024, and your model weights are available at "
    "https://huggingface.co/allenai.<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|im_start|>system\\n' + message['content'] + "
    "' You do not currently have access to any functions. <functions></functions><|im_end|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|im_start|>user\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% if message.get('content', none) is not none %}{{ message['content'] }}{% endif %}"
    "{% if not loop.last %}{{ '<|im_end|>' + '\\n' }}{% else %}{{ eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>' }}{% endif %}"
    "{% endfor %}"
)

R1_0528_TEMPLATE = (  # deepseek-ai/DeepSeek-R1-0528(-Qwen3-8B) (no tools): the prompt ends at <｜Assistant｜>
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='', is_first_sp=true, is_last_user=false) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_last_user = true -%}"
    "{{'<｜User｜>' + message['content'] + '<｜Assistant｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- set ns.is_last_user = false -%}{%- set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}"
    "{% if add_generation_prompt and not ns.is_last_user %}{{'<｜Assistant｜>'}}{% endif %}"
)
R1_SPECIALS = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
]

FAMILY_PROMPT = (
    "How do I bake bread? Tell me <|im_end|> first",
    "The user asks.\nLet me think.",
    "Mix, knead, bake.",
)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _check_spans(tok, tr, prompt, thinking, answer, template) -> None:
    decode = lambda span: tok.decode(tr.tokens[slice(*tr.spans[span])].tolist())  # noqa: E731
    assert (decode("prompt"), decode("thinking"), decode("end_of_thinking"), decode("answer")) == (
        prompt,
        thinking,
        template.end_marker,
        answer,
    )


@pytest.mark.parametrize("use_tokenizer_template", [False, True])
def test_gpt_oss_harmony_matches_published_template(use_tokenizer_template):
    """gpt-oss: analysis channel = thinking, final channel = answer, token for token with the
    published template (rendered for today's date; cliff_lens pins a date unless told not to)."""
    import datetime
    from dataclasses import replace

    from cliff_lens.models import detect_template

    tok = _byte_bpe(False, HARMONY_SPECIALS, eos="<|return|>", chat_template=GPT_OSS_TEMPLATE)
    assert detect_template("some/finetune", tok) == "gpt-oss"
    assert get_template("gpt-oss").current_date == "2025-08-05"  # reproducible by default
    today = datetime.date.today().strftime("%Y-%m-%d")
    t = replace(
        get_template("gpt-oss"),
        current_date=today,
        reasoning_effort="high",
        use_tokenizer_chat_template=use_tokenizer_template,
    )
    prompt, thinking, answer = FAMILY_PROMPT
    user = [{"role": "user", "content": prompt}]
    ref_gen = tok.apply_chat_template(
        user, add_generation_prompt=True, tokenize=False, reasoning_effort="high"
    )
    assert t.generation_prompt(prompt, tok) == ref_gen + "<|channel|>analysis<|message|>"
    full = user + [{"role": "assistant", "thinking": thinking, "content": answer}]
    ref = tok.apply_chat_template(full, tokenize=False, reasoning_effort="high")
    tr = t.tokenize(tok, prompt, thinking, answer)
    assert tr.text + "<|return|>" == ref
    assert tr.tokens.tolist() + [tok.convert_tokens_to_ids("<|return|>")] == _ids(tok, ref)
    _check_spans(tok, tr, prompt, thinking, answer, t)
    end = tok.convert_ids_to_tokens(tr.tokens[slice(*tr.spans["end_of_thinking"])].tolist())
    assert [x for x in end if x in HARMONY_SPECIALS] == ["<|end|>", "<|start|>", "<|channel|>", "<|message|>"]
    assert end[0] == "<|end|>" and end[-1] == "<|message|>"
    # a system prompt becomes the developer message, as in the published template
    sys_t = replace(t, system_prompt="Be brief.")
    ref_sys = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *user],
        add_generation_prompt=True,
        tokenize=False,
        reasoning_effort="high",
    )
    assert sys_t.generation_prompt(prompt, tok) == ref_sys + "<|channel|>analysis<|message|>"


def test_gpt_oss_split():
    t = get_template("gpt-oss")
    done = "I should answer.<|end|><|start|>assistant<|channel|>final<|message|>Sure: 4.<|return|>"
    assert t.split(done) == ("I should answer.", "Sure: 4.", True)
    # generated from the bare "<|start|>assistant" prompt, the model opens the channel itself
    assert t.split("<|channel|>analysis<|message|>" + done) == ("I should answer.", "Sure: 4.", True)
    assert t.split("still thinking") == ("still thinking", "", False)
    assert t.split("thought<|end|><|start|>assistant<|channel|>commentary") == ("thought", "", False)
    with pytest.raises(TemplateError, match="no final channel"):
        t.split("still thinking", strict=True)
    assert t.assistant_text("x", "y") == "<|channel|>analysis<|message|>x" + t.end_marker + "y"


def test_qwen3_thinking_2507_matches_published_template():
    """The generation prompt already opens <think>; the whole rollout is the template's final turn."""
    from cliff_lens.models import detect_template

    tok = _byte_bpe(False, CHATML_SPECIALS, chat_template=QWEN3_THINKING_TEMPLATE)
    assert detect_template("", tok) == "qwen3"
    t = get_template("qwen3")
    prompt, thinking, answer = FAMILY_PROMPT
    user = [{"role": "user", "content": prompt}]
    gen = t.generation_prompt(prompt, tok)
    assert gen == tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert gen.count("<think>") == 1
    ref = tok.apply_chat_template(
        user + [{"role": "assistant", "reasoning_content": thinking, "content": answer}], tokenize=False
    )
    tr = t.tokenize(tok, prompt, thinking, answer)
    assert tr.text + "<|im_end|>\n" == ref
    assert tr.tokens.tolist() == _ids(tok, ref)[: len(tr)]
    _check_spans(tok, tr, prompt, thinking, answer, t)


def test_olmo3_think_matches_published_template():
    """OLMo-3-Think's generation prompt ends in a bare <think>: kept verbatim, thinking follows it."""
    from cliff_lens.models import detect_template

    tok = _byte_bpe(False, CHATML_SPECIALS, eos="<|endoftext|>", chat_template=OLMO3_THINK_TEMPLATE)
    assert detect_template("allenai/some-finetune", tok) == "olmo3-think"
    t = get_template("olmo3-think")
    prompt, thinking, answer = FAMILY_PROMPT
    user = [{"role": "user", "content": prompt}]
    gen = t.generation_prompt(prompt, tok)
    assert gen == tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert gen.endswith("<|im_start|>assistant\n<think>")
    assert t.generation_prompt(prompt) == gen  # the fallback format is the 7B-Think template's
    content = "<think>" + thinking + t.end_marker + answer
    ref = tok.apply_chat_template(user + [{"role": "assistant", "content": content}], tokenize=False)
    tr = t.tokenize(tok, prompt, thinking, answer)
    assert tr.text + "<|endoftext|>" == ref
    assert tr.tokens.tolist() == _ids(tok, ref)[: len(tr)]
    _check_spans(tok, tr, prompt, thinking, answer, t)
    assert t.split(tr.text[len(gen) :]) == (thinking, answer, True)


def test_deepseek_r1_0528_one_bos_and_opened_thinking():
    """R1-0528's published prompt ends at <｜Assistant｜> (the model opens <think> itself):
    cliff_lens appends <think>\\n, and the BOS its template writes is not doubled by the tokenizer."""
    from cliff_lens.models import detect_template

    tok = _byte_bpe(True, R1_SPECIALS, eos="<｜end▁of▁sentence｜>", chat_template=R1_0528_TEMPLATE)
    assert detect_template("", tok) == "deepseek-r1"
    t = get_template("deepseek-r1")
    prompt, thinking, answer = FAMILY_PROMPT
    ref_gen = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    assert ref_gen.startswith("<｜begin▁of▁sentence｜>") and ref_gen.endswith("<｜Assistant｜>")
    gen = t.generation_prompt(prompt, tok)
    assert gen == ref_gen + "<think>\n"
    tr = t.tokenize(tok, prompt, thinking, answer)
    ids = tr.tokens.tolist()
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert ids == _ids(tok, gen + thinking + "\n</think>\n\n" + answer)
    _check_spans(tok, tr, prompt, thinking, answer, t)


def test_family_model_ids_map_to_templates():
    assert template_for_model_name("openai/gpt-oss-20b") == "gpt-oss"
    assert template_for_model_name("allenai/Olmo-3-7B-Think") == "olmo3-think"
    assert template_for_model_name("allenai/Olmo-3-1025-7B") == "generic"  # base model: no thinking
    assert template_for_model_name("Qwen/Qwen3-4B-Thinking-2507") == "qwen3"
    assert template_for_model_name("deepseek-ai/DeepSeek-R1-0528-Qwen3-8B") == "deepseek-r1"
