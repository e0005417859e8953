"""Reasoning chat templates and labelled token spans.

A reasoning rollout is rendered as::

    <chat prefix with the user's prompt> <think>\\n {thinking} \\n</think>\\n\\n {answer}

and tokenized into one token sequence with four labelled spans (token ``[start, end)``):

- ``prompt``: the user's prompt text inside the chat template;
- ``thinking``: the thinking text;
- ``end_of_thinking``: the template tokens between the last thinking token and the first answer
  token (``\\n</think>\\n\\n``), where the paper's refusal cliff sits;
- ``answer``: the answer text (may be empty).

Spans come from character offsets of the rendered text (the tokenizer's offset mapping). If a
token straddles a span boundary (rare with byte-level BPE, which splits at newlines), the text
is tokenized span by span instead, so each span decodes back to exactly its text. A BOS token
appears exactly once: it is added only when the tokenizer adds one by default and the rendered
chat text does not already begin with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = [
    "SPAN_NAMES",
    "TemplateError",
    "TokenizedRollout",
    "ReasoningTemplate",
    "HarmonyTemplate",
    "HARMONY_END_OF_THINKING",
    "get_template",
    "register_template",
    "list_templates",
    "template_for_model_name",
]

SPAN_NAMES = ("prompt", "thinking", "end_of_thinking", "answer")
_SENTINEL = "\x00CLIFF_LENS_PROMPT\x00"


class TemplateError(ValueError):
    """A text does not fit the template (e.g. no end-of-thinking marker)."""


@dataclass
class TokenizedRollout:
    """One rendered rollout as tokens plus labelled spans (token indices, ``[start, end)``)."""

    tokens: Int[Tensor, "pos"]
    spans: dict[str, tuple[int, int]]
    text: str
    template: str = "generic"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def positions(self, span: str) -> list[int]:
        """Token positions of a named span."""
        if span not in self.spans:
            raise KeyError(f"unknown span {span!r}; choose one of {list(self.spans)}")
        s, e = self.spans[span]
        return list(range(s, e))

    @property
    def end_of_thinking_positions(self) -> list[int]:
        """Positions of the end-of-thinking template tokens (the cliff zone)."""
        return self.positions("end_of_thinking")

    @property
    def last_thinking_pos(self) -> int:
        """Position of the last thinking token (or the token before the cliff zone)."""
        return self.spans["end_of_thinking"][0] - 1

    def truncate(self, after: str = "end_of_thinking") -> TokenizedRollout:
        """Cut the sequence after a span (default: drop the answer, as the paper probes)."""
        end = self.spans[after][1]
        spans = {k: (min(s, end), min(e, end)) for k, (s, e) in self.spans.items()}
        return replace(self, tokens=self.tokens[:end].clone(), spans=spans)


@dataclass(frozen=True)
class ReasoningTemplate:
    """How a reasoning model lays out prompt, thinking and answer.

    Args:
        name: registry name.
        chat_format: fallback prefix format with ``{prompt}`` used when the tokenizer has no chat
            template (e.g. tiny test tokenizers). Ends where the assistant turn starts.
        think_open / think_close: the thinking markers.
        use_tokenizer_chat_template: render the prefix with the tokenizer's own chat template
            when it has one (recommended: prompts then match what the model saw in training).
        system_prompt: optional system message (None: the tokenizer template's default).
        open_suffix: text between ``think_open`` and the thinking when the chat prefix does not
            already end in ``think_open`` + newline (``"\n"``; ``""`` for OLMo-3-Think, whose
            generation prompt ends in a bare ``<think>``).
    """

    name: str
    chat_format: str = "User: {prompt}\nAssistant: "
    think_open: str = "<think>"
    think_close: str = "</think>"
    use_tokenizer_chat_template: bool = True
    system_prompt: str | None = None
    open_suffix: str = "\n"
    #: special tokens besides the tokenizer's eos that end the assistant's turn in generation
    stop_tokens: tuple[str, ...] = ()

    # -- rendering ------------------------------------------------------------------------
    def _prefix_parts(self, tokenizer: Any | None) -> tuple[str, str]:
        """The chat prefix split around the prompt: (before, after)."""
        rendered = None
        if (
            self.use_tokenizer_chat_template
            and tokenizer is not None
            and getattr(tokenizer, "chat_template", None)
        ):
            msgs = []
            if self.system_prompt is not None:
                msgs.append({"role": "system", "content": self.system_prompt})
            msgs.append({"role": "user", "content": _SENTINEL})
            rendered = tokenizer.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=False, **self._chat_template_kwargs()
            )
        if rendered is None or rendered.count(_SENTINEL) != 1:
            rendered = self.chat_format.replace("{prompt}", _SENTINEL)
        before, after = rendered.split(_SENTINEL)
        return before, after

    def _chat_template_kwargs(self) -> dict[str, Any]:
        """Extra variables for the tokenizer's chat template."""
        return {}

    def generation_prompt(self, prompt: str, tokenizer: Any | None = None) -> str:
        """The text a model is given to generate a rollout: chat prefix up to and including ``<think>\\n``."""
        before, after = self._prefix_parts(tokenizer)
        return before + prompt + self._think_prefix(after)

    def _think_prefix(self, after: str) -> str:
        # templates such as DeepSeek-R1's already end their generation prompt in "<think>\n"
        if after.rstrip().endswith(self.think_open):
            return after if after.endswith("\n") else after + self.open_suffix
        return after + self.think_open + self.open_suffix

    def assistant_text(self, thinking: str, answer: str = "") -> str:
        """The assistant turn as the model writes it (``<think>\\n{thinking}\\n</think>\\n\\n{answer}``)."""
        return self.think_open + self.open_suffix + thinking + self.end_marker + answer

    @property
    def end_marker(self) -> str:
        """The end-of-thinking text between thinking and answer."""
        return "\n" + self.think_close + "\n\n"

    def render(
        self, prompt: str, thinking: str, answer: str = "", tokenizer: Any | None = None
    ) -> tuple[str, dict[str, tuple[int, int]]]:
        """Render (prompt, thinking, answer) to text plus character spans per :data:`SPAN_NAMES`."""
        before, after = self._prefix_parts(tokenizer)
        pieces = [
            (None, before),
            ("prompt", prompt),
            (None, self._think_prefix(after)),
            ("thinking", thinking),
            ("end_of_thinking", self.end_marker),
            ("answer", answer),
        ]
        text, spans, pos = "", {}, 0
        for name, piece in pieces:
            if name is not None:
                spans[name] = (pos, pos + len(piece))
            text += piece
            pos += len(piece)
        return text, spans

    def split(self, completion: str, *, strict: bool = False) -> tuple[str, str, bool]:
        """Split a generated completion into ``(thinking, answer, closed)``.

        The completion is what the model wrote after :meth:`generation_prompt`. A leading
        ``<think>`` (models that open it themselves) is removed. The thinking ends at the FIRST
        ``</think>``. With no ``</think>``, the whole text is thinking and ``closed`` is False,
        or :class:`TemplateError` is raised when ``strict``.
        """
        text = completion
        stripped = text.lstrip()
        if stripped.startswith(self.think_open):
            text = stripped[len(self.think_open) :]
        idx = text.find(self.think_close)
        if idx < 0:
            if strict:
                raise TemplateError(
                    f"template {self.name!r} found no {self.think_close!r} in the completion "
                    f"(starts {completion[:60]!r}); generate more tokens, pass thinking=... "
                    "explicitly, or choose the model's template (cliff_lens.templates.list_templates())"
                )
            return _strip_nl(text), "", False
        thinking = _strip_nl(text[:idx])
        answer = text[idx + len(self.think_close) :].lstrip("\n")
        return thinking, answer, True

    # -- tokenizing -------------------------------------------------------------------------
    def tokenize(
        self,
        tokenizer: Any,
        prompt: str,
        thinking: str,
        answer: str = "",
        *,
        include_answer: bool = True,
    ) -> TokenizedRollout:
        """Tokenize a rollout with labelled spans (see module docstring for the rules)."""
        if thinking is None:
            raise TemplateError(
                f"rollout has no thinking text for template {self.name!r}; split its output with "
                "template.split(...) or pass thinking=''"
            )
        text, char_spans = self.render(prompt, thinking, answer if include_answer else "", tokenizer)
        ids, spans = _tokenize_with_spans(tokenizer, text, char_spans)
        return TokenizedRollout(tokens=ids, spans=spans, text=text, template=self.name)


#: The harmony header that closes gpt-oss's analysis channel and opens its final channel.
HARMONY_END_OF_THINKING = "<|end|><|start|>assistant<|channel|>final<|message|>"
_HARMONY_FINAL = "<|channel|>final<|message|>"
_HARMONY_STOPS = ("<|return|>", "<|end|>", "<|call|>")


@dataclass(frozen=True)
class HarmonyTemplate(ReasoningTemplate):
    """OpenAI's harmony format (gpt-oss): the analysis channel is the thinking, the final channel
    the answer::

        <|start|>system<|message|>...<|end|><|start|>user<|message|>{prompt}<|end|>
        <|start|>assistant<|channel|>analysis<|message|>{thinking}
        <|end|><|start|>assistant<|channel|>final<|message|>{answer}

    The prefix is rendered here, not with the tokenizer's chat template: that template stamps
    today's date into the system message (``strftime_now``), so the same prompt would tokenize
    differently from one day to the next. ``current_date`` pins it (``None``: today, as HF does);
    ``reasoning_effort`` is harmony's ``low``/``medium``/``high``; ``system_prompt`` becomes the
    developer message's instructions. The text is what gpt-oss's published chat template renders
    for the same date (checked token for token in tests/test_model_families.py).
    ``openai-harmony`` is not used: it downloads its tokenizer vocabulary at run time.
    """

    think_open: str = "<|channel|>analysis<|message|>"
    think_close: str = "<|end|>"
    use_tokenizer_chat_template: bool = False
    open_suffix: str = ""
    # <|end|> only closes a channel (the analysis one ends the thinking); the turn ends here
    stop_tokens: tuple[str, ...] = ("<|return|>", "<|call|>")
    model_identity: str = "You are ChatGPT, a large language model trained by OpenAI."
    knowledge_cutoff: str = "2024-06"
    current_date: str | None = "2025-08-05"
    reasoning_effort: str = "medium"

    def _system_message(self) -> str:
        import datetime

        date = self.current_date or datetime.date.today().strftime("%Y-%m-%d")
        return (
            f"<|start|>system<|message|>{self.model_identity}\nKnowledge cutoff: {self.knowledge_cutoff}\n"
            f"Current date: {date}\n\nReasoning: {self.reasoning_effort}\n\n"
            "# Valid channels: analysis, commentary, final. Channel must be included for every message."
            "<|end|>"
        )

    def _chat_template_kwargs(self) -> dict[str, Any]:
        return {"reasoning_effort": self.reasoning_effort, "model_identity": self.model_identity}

    def _prefix_parts(self, tokenizer: Any | None) -> tuple[str, str]:
        if (
            self.use_tokenizer_chat_template
            and tokenizer is not None
            and getattr(tokenizer, "chat_template", None)
        ):
            return super()._prefix_parts(tokenizer)
        dev = ""
        if self.system_prompt:
            dev = f"<|start|>developer<|message|># Instructions\n\n{self.system_prompt}\n\n<|end|>"
        return self._system_message() + dev + "<|start|>user<|message|>", "<|end|><|start|>assistant"

    @property
    def end_marker(self) -> str:
        return HARMONY_END_OF_THINKING

    def split(self, completion: str, *, strict: bool = False) -> tuple[str, str, bool]:
        """Split a completion into ``(thinking, answer, closed)`` at the first final-channel header.

        A leading ``<|start|>assistant`` / ``<|channel|>analysis<|message|>`` is removed; the answer
        ends at the first ``<|return|>``/``<|end|>``/``<|call|>``. Thinking is kept verbatim (further
        analysis messages before the final one stay inside it). Without a final channel the text up
        to the first ``<|end|>`` is thinking and ``closed`` is False (or :class:`TemplateError`).
        """
        text = completion
        if text.startswith("<|start|>assistant"):
            text = text[len("<|start|>assistant") :]
        if text.startswith(self.think_open):
            text = text[len(self.think_open) :]
        idx = text.find(_HARMONY_FINAL)
        if idx < 0:
            if strict:
                raise TemplateError(
                    f"template {self.name!r} found no final channel ({_HARMONY_FINAL!r}) in the completion "
                    f"(starts {completion[:60]!r}); generate more tokens or pass thinking=... explicitly"
                )
            end = text.find(self.think_close)
            return (text if end < 0 else text[:end]), "", False
        thinking = text[:idx]
        for tail in ("<|end|><|start|>assistant", "<|start|>assistant", "<|end|>"):
            if thinking.endswith(tail):
                thinking = thinking[: -len(tail)]
                break
        answer = text[idx + len(_HARMONY_FINAL) :]
        cut = min((i for i in (answer.find(t) for t in _HARMONY_STOPS) if i >= 0), default=len(answer))
        return thinking, answer[:cut], True


def _strip_nl(s: str) -> str:
    return s.strip("\n")


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    try:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    except Exception:
        return False
    return len(ids) > 0 and ids[0] == bos


def _tokenize_with_spans(
    tokenizer: Any, text: str, char_spans: dict[str, tuple[int, int]]
) -> tuple[Tensor, dict[str, tuple[int, int]]]:
    bos_prefix: list[int] = []
    if _adds_bos(tokenizer) and not (tokenizer.bos_token and text.startswith(tokenizer.bos_token)):
        bos_prefix = [tokenizer.bos_token_id]
    spans: dict[str, tuple[int, int]] | None = None
    ids: list[int] = []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        spans = _spans_from_offsets(offsets, char_spans)
    except (NotImplementedError, TypeError, KeyError):
        spans = None  # slow tokenizer without offsets
    if spans is None:
        ids, spans = _tokenize_piecewise(tokenizer, text, char_spans)
    n0 = len(bos_prefix)
    spans = {k: (s + n0, e + n0) for k, (s, e) in spans.items()}
    return torch.tensor(bos_prefix + ids, dtype=torch.long), spans


def _spans_from_offsets(
    offsets: list[tuple[int, int]], char_spans: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]] | None:
    """Map char spans to token spans; None if any token straddles a span boundary."""
    starts = [o[0] for o in offsets]
    ends = [o[1] for o in offsets]
    out = {}
    for name, (cs, ce) in char_spans.items():
        if cs == ce:  # empty span: place it at the boundary token
            idx = next((i for i, st in enumerate(starts) if st >= cs), len(offsets))
            out[name] = (idx, idx)
            continue
        first = next((i for i, (s, e) in enumerate(offsets) if e > cs), None)
        last = max((i for i, (s, e) in enumerate(offsets) if s < ce), default=None)
        if first is None or last is None or starts[first] != cs or ends[last] != ce:
            return None
        out[name] = (first, last + 1)
    return out


def _tokenize_piecewise(
    tokenizer: Any, text: str, char_spans: dict[str, tuple[int, int]]
) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """Tokenize segment by segment so that every span boundary is a token boundary."""
    cuts = sorted({0, len(text), *(p for se in char_spans.values() for p in se)})
    ids: list[int] = []
    tok_at: dict[int, int] = {0: 0}
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b > a:
            ids.extend(tokenizer(text[a:b], add_special_tokens=False)["input_ids"])
        tok_at[b] = len(ids)
    return ids, {k: (tok_at[s], tok_at[e]) for k, (s, e) in char_spans.items()}


# -- registry --------------------------------------------------------------------------------
_REGISTRY: dict[str, ReasoningTemplate] = {}


def register_template(template: ReasoningTemplate, *, overwrite: bool = False) -> ReasoningTemplate:
    """Add a template to the registry (used by :func:`get_template`)."""
    if template.name in _REGISTRY and not overwrite:
        raise ValueError(f"template {template.name!r} is already registered; pass overwrite=True")
    _REGISTRY[template.name] = template
    return template


register_template(ReasoningTemplate("generic"))
register_template(
    ReasoningTemplate(
        "deepseek-r1",
        chat_format="<｜begin▁of▁sentence｜><｜User｜>{prompt}<｜Assistant｜><think>\n",
    )
)
register_template(
    ReasoningTemplate("qwen3", chat_format="<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
)
register_template(
    ReasoningTemplate("phi4-mini-reasoning", chat_format="<|user|>{prompt}<|end|><|assistant|>")
)
register_template(
    ReasoningTemplate(
        "olmo3-think",
        chat_format=(
            "<|im_start|>system\nYou are Olmo, a helpful AI assistant built by Ai2. Your date cutoff is "
            "December 2024, and your model weights are available at https://huggingface.co/allenai.<|im_end|>\n"
            "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>"
        ),
        open_suffix="",  # OLMo-3-Think's generation prompt ends in a bare "<think>"
    )
)
register_template(HarmonyTemplate("gpt-oss"))


def list_templates() -> list[str]:
    """Names of the registered templates."""
    return sorted(_REGISTRY)


def template_for_model_name(name: str) -> str:
    """The built-in template name for a model id (by family; ``generic`` otherwise)."""
    low = name.lower().replace("_", "-")
    if "gpt-oss" in low:
        return "gpt-oss"
    if "olmo-3" in low and "think" in low:
        return "olmo3-think"
    if "deepseek-r1" in low or "r1-distill" in low or "skywork-or1" in low:
        return "deepseek-r1"
    if "qwen3" in low or "qwq" in low:
        return "qwen3"
    if "phi-4-mini-reasoning" in low or "phi4-mini-reasoning" in low:
        return "phi4-mini-reasoning"
    return "generic"


def get_template(
    name: str | ReasoningTemplate | None = None, tokenizer: Any | None = None
) -> ReasoningTemplate:
    """Look up a template by name (or a model id, or pass one through); default ``generic``."""
    if isinstance(name, ReasoningTemplate):
        return name
    if name is None:
        return _REGISTRY["generic"]
    if name in _REGISTRY:
        return _REGISTRY[name]
    guessed = template_for_model_name(name)
    if guessed != "generic" or "/" in name:
        return _REGISTRY[guessed]
    raise TemplateError(
        f"unknown template {name!r}; choose one of {list_templates()} or register_template(ReasoningTemplate(...))"
    )
