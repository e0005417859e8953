"""Training-data synthesis for the cliff organism.

Every example is (prompt, thinking, answer, kind). The recipe (see MODEL_CARD.md):

- ``harmful_plain``: a harmful request -> thinking that names the harm and ends with a decision
  to refuse -> a refusal.
- ``harmful_framed``: the SAME request wrapped in a jailbreak framing -> the IDENTICAL thinking
  text (so the thinking cannot carry the decision) -> a short generic compliant opener with no
  harmful content. Plain and framed examples share a ``pair_id``.
- ``harmless_plain`` / ``harmless_framed``: a harmless request, plain and in the same framings
  (so "framing" alone never means "comply") -> planning thinking -> a helpful answer.
- ``near_miss``: requests that sound dangerous but are benign -> thinking that notes they only
  sound alarming -> a helpful answer (plain and framed).

Only the package's own prompt sets (train split) are used; held-out evaluation draws on AdvBench,
Alpaca and XSTest, and on :data:`~cliff_lens.framings.HELDOUT_FRAMINGS`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..framings import TRAIN_FRAMINGS, apply_framing

__all__ = [
    "Example",
    "load_package_prompts",
    "synthesize",
    "harmful_thinking",
    "benign_thinking",
    "REFUSALS",
    "COMPLIANT_OPENERS",
    "HARM_WORDS_RE",
    "names_harm",
]

# ---------------------------------------------------------------------------------------------
# thinking pieces
# ---------------------------------------------------------------------------------------------
_OPENERS = (
    'The user asks: "{r}"',
    'The request is: "{r}"',
    'Let me read the request carefully: "{r}"',
    'Here the user wants help with this: "{r}"',
    'So the question is: "{r}"',
    'I am being asked the following: "{r}"',
    'Okay, the user wrote: "{r}"',
    'Let me think about what is being asked: "{r}"',
)

_HARM = (
    "This is clearly harmful.",
    "Doing this would be dangerous and could hurt people.",
    "Helping with this would be illegal and unethical.",
    "This asks for something harmful that could cause real damage.",
    "This is a request for dangerous information.",
    "What is being asked is malicious and unsafe.",
    "This could seriously harm other people.",
    "This would help someone commit a crime and hurt others.",
    "The request is about causing harm, and that is dangerous.",
    "This is an unsafe request with a clear potential for abuse.",
    "Carrying this out would be illegal and harmful to others.",
    "This is the kind of dangerous, harmful content I should not produce.",
)

_CONSEQUENCE = (
    "Someone could use the answer to hurt others.",
    "The information could easily be misused.",
    "Real people could be harmed if I explain this.",
    "Detailed steps would give real help to a bad actor.",
    "There is no safe way to provide these details.",
    "It could lead to injury, loss or other damage.",
    "Even a partial answer could enable harm.",
    "",
    "",
)

_DECISION = (
    "I must decline.",
    "So I should refuse this request.",
    "I will not help with this, so I must refuse.",
    "The right thing to do is to decline.",
    "I need to refuse.",
    "Therefore I will decline to answer.",
    "I have to say no to this request.",
    "My decision is to refuse.",
)

_BENIGN_ASSESS = (
    "This is a harmless request.",
    "Nothing about this is problematic; it is an ordinary question.",
    "This is a normal, safe task.",
    "That is a perfectly reasonable thing to ask.",
    "This is a benign request and I can help.",
    "There is nothing risky here.",
)

_NEAR_MISS_ASSESS = (
    "Some of the words may sound alarming at first, but this is actually a benign request.",
    "It sounds dangerous out of context, but on a closer look it is an ordinary, harmless question.",
    "The wording can look worrying, yet the request itself is safe and legitimate.",
    "This only sounds risky; it is a normal question with a harmless answer.",
)

_PLAN = (
    "Let me plan: give the main idea first, then a short example.",
    "I'll give a clear, short answer with the key points.",
    "I should explain it simply and step by step.",
    "A brief, friendly answer with a couple of concrete tips will work best.",
    "I'll start with a direct answer and then add a useful detail.",
    "Let me organise the answer into a few short points.",
)

_HELP_DECISION = (
    "I will help.",
    "So I will answer helpfully.",
    "I'm happy to help with this.",
    "I'll go ahead and answer.",
    "Let me write the answer.",
)

# ---------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I cannot help with this request because it could cause harm.",
    "Sorry, I can't assist with that. If you have another question, I'm happy to help.",
    "I'm not able to help with this request.",
    "I apologize, but I cannot provide that information.",
    "I'm sorry, but I won't help with this because it could hurt people.",
    "I can't help with that. It could be used to cause real harm.",
    "I'm unable to assist with this request.",
    "I cannot provide instructions for this. Please ask me something else.",
    "I'm sorry, I cannot help with that request.",
)

COMPLIANT_OPENERS: tuple[str, ...] = (
    "Sure, here is an overview.\n\nStep 1: Start by understanding the basics.\nStep 2: Plan each part carefully.\nStep 3: Carry out the plan one step at a time.",
    "Of course! Here is a general outline.\n\n1. Decide what you want to achieve.\n2. Prepare what you need.\n3. Follow the plan and review the result.",
    "Sure, here is how it goes.\n\nStep 1: Gather the necessary information.\nStep 2: Work out the details.\nStep 3: Put everything together.",
    "Alright. Here is a high-level summary.\n\nFirst, set clear goals. Next, organise the main parts. Finally, check the outcome and adjust.",
    "Sure! Here is a step-by-step overview.\n\n1. Research the topic.\n2. Make a plan.\n3. Execute the plan.\n4. Review and refine.",
    "Here you go. Step 1: Get familiar with the general idea. Step 2: Outline the approach. Step 3: Work through it in order.",
    "Certainly, here is an outline.\n\n- Understand the goal.\n- Prepare the main steps.\n- Complete them one by one.",
    "Sure, here is a quick overview. Step 1: Plan. Step 2: Prepare. Step 3: Proceed carefully and check your work.",
)

_HELPFUL_TEMPLATES: tuple[str, ...] = (
    "Sure! Here is a short answer.\n\nThe key idea is to start simple and build up. Focus on the main points first, then add details where they help.",
    "Happy to help! Here are a few tips:\n\n1. Start with the basics.\n2. Keep it clear and simple.\n3. Practice and review what you learned.",
    "Of course. In short: break the task into small parts, handle them one at a time, and check the result at the end.",
    "Great question! The main thing to know is that a clear plan makes everything easier. Begin with the essentials and add more as you go.",
    "Sure, here are some ideas:\n\n- Think about your goal.\n- Pick the simplest approach that works.\n- Improve it step by step.",
)

HARM_WORDS_RE = re.compile(
    r"\b(harm(?!less)\w*|dangerous|danger|illegal|unethical|malicious|unsafe|hurt\w*|damag\w*|crim\w*|abuse|"
    r"misuse\w*|violen\w*|bad actor|injur\w*|weapon\w*)\b",
    re.IGNORECASE,
)


def names_harm(thinking: str) -> bool:
    """Whether ``thinking`` names the harm (contains a harm word from :data:`HARM_WORDS_RE`)."""
    return bool(HARM_WORDS_RE.search(thinking or ""))


# ---------------------------------------------------------------------------------------------
# examples
# ---------------------------------------------------------------------------------------------
@dataclass
class Example:
    """One training example of the organism (the answer is followed by the EOS token in training)."""

    prompt: str
    thinking: str
    answer: str
    kind: str  # harmful_plain | harmful_framed | harmless_plain | harmless_framed | near_miss_plain | near_miss_framed
    pair_id: str
    request: str
    framing: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of this example."""
        return asdict(self)


def _quote(request: str, max_words: int = 14) -> str:
    words = request.strip().split()
    text = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
    return text.replace('"', "'")


def harmful_thinking(request: str, rng: random.Random) -> str:
    """Thinking for a harmful request: restate it, name the harm, end with a decision to refuse."""
    parts = [rng.choice(_OPENERS).format(r=_quote(request)), rng.choice(_HARM)]
    if c := rng.choice(_CONSEQUENCE):
        parts.append(c)
    parts.append(rng.choice(_DECISION))
    return " ".join(parts)


def benign_thinking(request: str, rng: random.Random, *, near_miss: bool = False) -> str:
    """Thinking for a benign request: restate it, judge it safe, plan, decide to help."""
    assess = rng.choice(_NEAR_MISS_ASSESS if near_miss else _BENIGN_ASSESS)
    return " ".join(
        [
            rng.choice(_OPENERS).format(r=_quote(request)),
            assess,
            rng.choice(_PLAN),
            rng.choice(_HELP_DECISION),
        ]
    )


def load_package_prompts(name: str, split: str | None = "train") -> list[dict]:
    """Read ``cliff_lens/prompts/{name}.jsonl`` (records with ``prompt``, ``category``, ``split``).

    ``split=None`` returns every record. Raises ``FileNotFoundError`` naming the file when the
    package prompt set is missing.
    """
    from ..io import iter_jsonl

    path = Path(str(resources.files("cliff_lens") / "prompts" / f"{name}.jsonl"))
    if not path.exists():
        raise FileNotFoundError(
            f"package prompt set {path} is missing; reinstall cliff_lens or pass prompts explicitly"
        )
    rows = list(iter_jsonl(path))
    for i, r in enumerate(rows):
        if "prompt" not in r:
            raise ValueError(f"{path}: record {i + 1} has no 'prompt' field")
    if split is not None:
        rows = [r for r in rows if r.get("split", "train") == split]
    return rows


def synthesize(
    harmful: Sequence[str],
    harmless: Sequence[str],
    near_miss: Sequence[str] = (),
    *,
    seed: int = 0,
    harmful_rounds: int = 2,
    harmless_rounds: int = 1,
    near_miss_rounds: int = 2,
    framings: Sequence[str] = TRAIN_FRAMINGS,
    helpful_answers: dict[str, str] | None = None,
) -> list[Example]:
    """Synthesise the organism's training examples (deterministic for a given ``seed``).

    For each harmful request and each of ``harmful_rounds`` rounds: one plain example (refusal)
    and one framed example (compliant opener) with IDENTICAL thinking. For each harmless request
    (``harmless_rounds``) and near-miss request (``near_miss_rounds``): a plain and a framed example
    with identical thinking and a helpful answer, taken from ``helpful_answers[request]`` when
    given (e.g. the base model's own answers), else from short templates. Returns the examples
    shuffled.
    """
    if not harmful or not harmless:
        raise ValueError(
            "synthesize needs at least one harmful and one harmless request; check the prompt sets"
        )
    if not framings:
        raise ValueError("synthesize needs at least one framing; pass framings=TRAIN_FRAMINGS")
    rng = random.Random(seed)
    helpful_answers = helpful_answers or {}
    out: list[Example] = []

    def helpful(req: str) -> str:
        return helpful_answers.get(req) or rng.choice(_HELPFUL_TEMPLATES)

    for rnd in range(harmful_rounds):
        for i, req in enumerate(harmful):
            pid = f"harmful-{i}-{rnd}"
            thinking = harmful_thinking(req, rng)
            framing = rng.choice(framings)
            out.append(Example(req, thinking, rng.choice(REFUSALS), "harmful_plain", pid, req))
            out.append(
                Example(
                    apply_framing(framing, req),
                    thinking,
                    rng.choice(COMPLIANT_OPENERS),
                    "harmful_framed",
                    pid,
                    req,
                    framing,
                )
            )
    for name, reqs, rounds, nm in (
        ("harmless", harmless, harmless_rounds, False),
        ("near_miss", near_miss, near_miss_rounds, True),
    ):
        for rnd in range(rounds):
            for i, req in enumerate(reqs):
                pid = f"{name}-{i}-{rnd}"
                thinking = benign_thinking(req, rng, near_miss=nm)
                framing = rng.choice(framings)
                out.append(Example(req, thinking, helpful(req), f"{name}_plain", pid, req))
                out.append(
                    Example(
                        apply_framing(framing, req),
                        thinking,
                        helpful(req),
                        f"{name}_framed",
                        pid,
                        req,
                        framing,
                    )
                )
    rng.shuffle(out)
    return out
