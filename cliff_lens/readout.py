"""The read-out engine: examples -> padded batches -> one hooked forward -> values at positions.

Every module that reads a ``HookedTransformer`` (activations, trajectories, head means, probe
scores, pool scoring; head attribution next) goes through the pieces below, so each concept is
written once:

* **examples** -- :func:`as_examples` turns ``TokenizedRollout`` records (``.tokens`` +
  ``.spans``), 1-D token tensors / lists, strings or an ``[n, pos]`` tensor into
  :class:`Example` objects (1-D long tokens, spans, id);
* **positions** -- one grammar, :data:`PositionSpec`, parsed by :func:`parse_positions` and
  resolved per example by :func:`resolve_positions` (see below);
* **preparation** -- :func:`prepare` resolves the positions of every example, cuts each
  sequence after the last position read (the model is causal) and handles sequences longer
  than ``n_ctx`` (error, or left truncation with spans shifted);
* **batches** -- :func:`length_buckets` groups sequences of similar length, :func:`left_pad`
  LEFT-pads them with an attention mask and per-row offsets, :class:`Batch` maps each example's
  positions to padded columns (:meth:`Batch.gather_index`, :meth:`Batch.weights`,
  :meth:`Batch.position_mask`);
* **the hooked forward** -- :func:`run_batches` runs the batches with a reader hook on the named
  hook points only (a names filter: nothing else is cached), optional per-batch intervention
  hooks, and ``stop_at_layer`` right after the deepest block read (:func:`stop_layer`), so the
  unembedding is never computed;
* **hook points** -- :func:`resolve_hook` turns a user hook name (``{L}`` placeholder allowed,
  or :data:`FINAL_NORM_WEIGHTED`) into a :class:`HookSpec`; :func:`final_norm` is THE final norm
  of a residual: the model's own ``ln_final`` output (normalisation, weight AND bias), i.e. what
  the unembedding reads.

Position grammar (:data:`PositionSpec`; negative indices count from the end of the example)::

    "all"              every token                                  ragged  -> [len_i, ...]
    "last"             the last token                               single  -> [...]
    "<span>"           every token of a span ("thinking", ...)      ragged
    "last:<span>"      the last token of a span (canonical)         single
    "<span>_last"      the same, older spelling (e.g. "end_of_thinking_last")
    int                one index                                    single
    [i, j, ...]        indices, in the order given (a 1-D tensor too) fixed   -> [k, ...]
    (start, end)       a half-open range                            ragged

Spans come from the record (``TokenizedRollout.spans``); a span rule on a bare token sequence,
a missing span, an index or range outside the sequence, or ``"last:<span>"`` of an empty span
raise a ``ValueError`` that names the example. An empty span or range selects nothing (zero
rows); readers that average over positions refuse an empty selection.

TransformerLens handles left padding when an explicit ``attention_mask`` is passed: pad keys are
masked and rotary / learned positions are shifted so every sequence starts at position 0; so a
batched read equals one-at-a-time reads (``tests/test_readout.py``).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ._typing import Validated
from .fast_forward import fast_forward
from .templates import SPAN_NAMES

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "PositionSpec",
    "PositionKind",
    "SPAN_NAMES",
    "FINAL_NORM_WEIGHTED",
    "NonFiniteActivationError",
    "Example",
    "as_examples",
    "Positions",
    "parse_positions",
    "resolve_positions",
    "Prepared",
    "prepare",
    "length_buckets",
    "left_pad",
    "pad_token_id",
    "model_device",
    "Batch",
    "run_batches",
    "HookSpec",
    "resolve_hook",
    "stop_layer",
    "final_norm",
    "screen_nonfinite",
]

logger = logging.getLogger(__name__)

FINAL_NORM_WEIGHTED = "final_norm_weighted"

# A tensor spec is a 0-d index (like an int) or a 1-D list of indices; "_k" is a documentation-only
# dim so the alias never binds a "k" of the function it annotates.
PositionSpec = str | int | tuple[int, int] | Sequence[int] | Int[Tensor, ""] | Int[Tensor, " _k"]
"""Which token positions to read; see the module docstring for the grammar."""

PositionKind = Literal["single", "fixed", "ragged"]
"""Shape class of a position rule: one position, a fixed list of k, or a per-example number."""

HookFn = Callable[[Tensor, Any], Any]


class NonFiniteActivationError(ValueError):
    """NaN or inf activations were found; the message names the example(s)."""


# --------------------------------------------------------------------------------------
# examples
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One input sequence: 1-D long tokens (CPU), its spans (or None) and its id.

    ``index`` is its place in the input; ``id`` the record's id (``.id`` or ``meta["id"]``) or
    ``index``.
    """

    tokens: Int[Tensor, " pos"]
    spans: dict[str, tuple[int, int]] | None
    id: Any
    index: int

    @property
    def label(self) -> str:
        """How error messages name the example: ``"3"`` or ``"3 (id='abc')"``."""
        return _label(self.id, self.index)


def _label(ident: Any, index: int) -> str:
    return f"{index}" if ident is None or ident == index else f"{index} (id={ident!r})"


def as_examples(batch: Any, model: HookedTransformer | None = None) -> list[Example]:
    """Normalise a batch to a list of :class:`Example`.

    ``batch``: a list (or iterable) of ``TokenizedRollout`` records (``.tokens``, ``.spans``),
    1-D token tensors, token lists or strings (tokenised with ``model.to_tokens``, so they need
    ``model``); an ``[n, pos]`` tensor (one example per row); or a single record / 1-D tensor.
    Raises ``ValueError`` / ``TypeError`` naming the bad item (empty batch, empty or 2-D tokens,
    float tokens).
    """
    if isinstance(batch, Tensor):
        if batch.ndim == 1:
            batch = [batch]
        elif batch.ndim == 2:
            batch = list(batch)
        else:
            raise ValueError(f"token tensor must be 1-D or 2-D [n, pos], got shape {tuple(batch.shape)}")
    elif hasattr(batch, "tokens") and hasattr(batch, "spans"):
        batch = [batch]
    if not isinstance(batch, str | bytes | Sequence) and hasattr(batch, "__iter__"):
        batch = list(batch)  # generators / iterators of examples
    if isinstance(batch, str | bytes) or not isinstance(batch, Sequence):
        raise TypeError(
            f"batch must be a list of TokenizedRollout, 1-D token tensors or strings, got {type(batch).__name__}"
        )
    out = []
    for i, x in enumerate(batch):
        spans = None
        ident: Any = i
        if isinstance(x, str):
            if model is None or getattr(model, "tokenizer", None) is None:
                raise ValueError("string inputs need model.tokenizer; pass token tensors instead")
            toks = model.to_tokens(x)[0]
        elif hasattr(x, "tokens"):
            toks = x.tokens
            raw = getattr(x, "spans", None)
            spans = None if raw is None else {k: (int(s), int(e)) for k, (s, e) in dict(raw).items()}
            meta = getattr(x, "meta", None)
            ident = getattr(x, "id", None) or (meta.get("id") if isinstance(meta, dict) else None) or i
        elif isinstance(x, Tensor):
            toks = x
        elif isinstance(x, list | tuple):
            toks = torch.tensor(x, dtype=torch.long)
        else:
            raise TypeError(
                f"example {i}: expected TokenizedRollout, token tensor or str, got {type(x).__name__}"
            )
        toks = torch.as_tensor(toks)
        if toks.ndim == 2 and toks.shape[0] == 1:
            toks = toks[0]
        if toks.ndim != 1:
            raise ValueError(f"example {i}: tokens must be 1-D, got shape {tuple(toks.shape)}")
        if toks.is_floating_point():
            raise TypeError(f"example {i} has float tokens ({toks.dtype}); pass integer token ids")
        ex = Example(toks.long().cpu(), spans, ident, i)
        if toks.numel() == 0:
            raise ValueError(f"example {ex.label}: empty token sequence; drop it before reading")
        out.append(ex)
    if not out:
        raise ValueError("empty batch: nothing to read; pass at least one TokenizedRollout or token tensor")
    return out


# --------------------------------------------------------------------------------------
# the position grammar
# --------------------------------------------------------------------------------------

_Rule = Literal["all", "last", "span", "span_last", "range", "indices"]


@dataclass(frozen=True)
class Positions:
    """A parsed position rule (see the module docstring); :meth:`resolve` applies it to one example."""

    rule: _Rule
    kind: PositionKind
    span: str | None = None
    start: int = 0
    end: int = 0
    indices: tuple[int, ...] = ()
    spec: Any = None  # what the user wrote, for messages

    @property
    def canonical(self) -> str | int | tuple[int, int] | list[int]:
        """The rule in the canonical spelling (``"last:end_of_thinking"``, ``(0, 5)``, ...)."""
        if self.rule in ("all", "last"):
            return self.rule
        if self.rule == "span":
            return cast(str, self.span)  # a "span" rule always names its span
        if self.rule == "span_last":
            return f"last:{self.span}"
        if self.rule == "range":
            return (self.start, self.end)
        return self.indices[0] if self.kind == "single" else list(self.indices)

    def resolve(
        self, n_tokens: int, spans: dict | None = None, *, where: str = "example 0"
    ) -> Int[Tensor, " k"]:
        """Absolute positions (``0 .. n_tokens-1``) of one example, in rule order."""
        if self.rule == "all":
            return torch.arange(n_tokens)
        if self.rule == "last":
            return torch.tensor([n_tokens - 1])
        if self.rule in ("span", "span_last"):
            if spans is None:
                raise ValueError(
                    f"{where}: positions={self.spec!r} needs spans, but the example is a bare token sequence "
                    "without span information; pass TokenizedRollout records (template.tokenize(...)) or "
                    "positions='last' / 'all' / (start, end) / a list of indices"
                )
            if self.span not in spans:
                raise ValueError(
                    f"{where}: positions={self.spec!r}: the example has no span {self.span!r} "
                    f"(spans: {sorted(spans)}); use one of those, 'last:<span>', 'last' or 'all'"
                )
            s, e = (int(v) for v in spans[self.span])
            if not 0 <= s <= e <= n_tokens:
                raise ValueError(
                    f"{where}: span {self.span}={(s, e)} lies outside its {n_tokens} tokens; "
                    "check the template split"
                )
            if self.rule == "span":
                return torch.arange(s, e)
            if e == s:
                raise ValueError(
                    f"{where}: span {self.span!r} is empty (e.g. a rollout without thinking), so "
                    f"positions={self.spec!r} has no last token; filter such rollouts out or read another span"
                )
            return torch.tensor([e - 1])
        if self.rule == "range":
            s = self.start + n_tokens if self.start < 0 else self.start
            e = self.end + n_tokens if self.end < 0 else self.end
            if not 0 <= s <= e <= n_tokens:
                raise ValueError(
                    f"{where}: positions=(start, end)={(self.start, self.end)} is outside its {n_tokens} "
                    f"tokens; pass 0 <= start <= end <= {n_tokens} (negative values count from the end)"
                )
            return torch.arange(s, e)
        out = []
        for p in self.indices:
            q = p + n_tokens if p < 0 else p
            if not 0 <= q < n_tokens:
                raise ValueError(
                    f"{where}: position {p} is outside its {n_tokens} tokens; "
                    f"use -{n_tokens} <= position < {n_tokens}"
                )
            out.append(q)
        return torch.tensor(out, dtype=torch.long)


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_positions(spec: Validated[PositionSpec | Positions]) -> Positions:
    """Parse a position spec once (errors for malformed specs are raised here, before any forward).

    Accepts the canonical spellings and the older ``"<span>_last"`` (= ``"last:<span>"``).
    """
    if isinstance(spec, Positions):
        return spec
    if isinstance(spec, str):
        if spec in ("all", "last"):
            return Positions(spec, "ragged" if spec == "all" else "single", spec=spec)  # type: ignore[arg-type]
        if spec.startswith("last:"):
            name, last = spec[len("last:") :], True
        elif spec.endswith("_last"):
            name, last = spec[: -len("_last")], True
        else:
            name, last = spec, False
        if not name or ":" in name:
            raise ValueError(
                f"positions={spec!r} is not understood; use 'last', 'all', a span name {SPAN_NAMES}, "
                "'last:<span>', an int, an (start, end) tuple or a list of indices"
            )
        return Positions(
            "span_last" if last else "span", "single" if last else "ragged", span=name, spec=spec
        )
    if isinstance(spec, Tensor):
        if spec.dtype == torch.bool or spec.is_floating_point():
            raise TypeError(
                f"positions is a {spec.dtype} tensor; pass integer indices (boolean [batch, pos] masks are "
                "for ablation hooks: cliff_lens.ablation.positions_mask)"
            )
        if spec.ndim == 0:
            return Positions("indices", "single", indices=(int(spec),), spec=int(spec))
        spec = [int(v) for v in spec.flatten().tolist()]
    if _is_int(spec):
        return Positions("indices", "single", indices=(int(spec),), spec=spec)
    if isinstance(spec, tuple) and len(spec) == 2 and all(_is_int(v) for v in spec):
        return Positions("range", "ragged", start=spec[0], end=spec[1], spec=spec)
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes) and all(_is_int(v) for v in spec):
        if not spec:
            raise ValueError("positions=[] is an empty list: it selects nothing; pass at least one index")
        return Positions("indices", "fixed", indices=tuple(int(v) for v in spec), spec=spec)
    raise TypeError(
        f"positions={spec!r} is not understood ({type(spec).__name__}); use 'last', 'all', a span name, "
        "'last:<span>', an int, an (start, end) tuple or a list of indices"
    )


def resolve_positions(
    positions: PositionSpec | Positions,
    n_tokens: int,
    spans: dict | None = None,
    *,
    index: int = 0,
    ident: Any = None,
) -> Int[Tensor, " k"]:
    """Absolute positions of one example (``n_tokens`` long, with ``spans``) for a position spec.

    Indices keep the order (and repeats) of a list rule; use ``.unique()`` for a set of tokens.
    ``index`` / ``ident`` name the example in error messages.
    """
    where = f"example {_label(ident, index)}"
    return parse_positions(positions).resolve(n_tokens, spans, where=where)


# --------------------------------------------------------------------------------------
# preparation: positions, trimming, n_ctx
# --------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """An example ready for the forward pass.

    ``tokens``: the sequence fed to the model (cut after the last position read when trimming,
    and left-truncated to ``n_ctx`` if asked); ``positions``: the positions to read, relative to
    ``tokens``; ``spans``: the record's spans in the coordinates of ``tokens`` (clipped), or None;
    ``cut``: how many tokens were dropped on the left.
    """

    tokens: Int[Tensor, " pos"]
    positions: Int[Tensor, " k"]
    spans: dict[str, tuple[int, int]] | None
    example: Example
    cut: int = 0


def prepare(
    model: HookedTransformer,
    batch: Any,
    positions: PositionSpec | Positions = "all",
    *,
    truncate: Validated[Literal["error", "left"]] = "error",
    trim: bool = True,
    nonempty: bool = False,
    what: str = "example",
) -> tuple[list[Prepared], PositionKind]:
    """Examples of ``batch`` with their positions resolved, ready for :func:`run_batches`.

    ``trim``: cut each sequence after its last position read (exact for a causal model; pass
    ``False`` when hooks act on later tokens, e.g. an ablation whose effect is normalised over
    the whole sequence). A sequence needing more than ``n_ctx`` tokens raises, or with
    ``truncate="left"`` loses its first tokens (a warning; spans shift; positions cut off are
    dropped from a ragged rule, an error for single / fixed ones). ``nonempty``: refuse an
    example whose rule selects no token (for readers that average over the positions). ``what``
    names an example in messages (``"example"``, ``"rollout"``). Returns the prepared examples
    and the rule's kind.
    """
    if truncate not in ("error", "left"):
        raise ValueError(f"truncate must be 'error' or 'left', got {truncate!r}")
    rule = parse_positions(positions)
    if isinstance(batch, list) and batch and all(isinstance(e, Example) for e in batch):
        examples = batch
    else:
        examples = as_examples(batch, model)
    n_ctx = model.cfg.n_ctx
    out = []
    n_trunc = 0
    for ex in examples:
        n = ex.tokens.numel()
        idx = rule.resolve(n, ex.spans, where=f"{what} {ex.label}")
        if nonempty and idx.numel() == 0:
            raise ValueError(
                f"positions={rule.spec!r} selects no token of {what} {ex.label}; choose a non-empty span or range"
            )
        end = (int(idx.max()) + 1 if idx.numel() else 1) if trim else n
        cut = max(0, end - n_ctx)
        if cut:
            if truncate != "left":
                raise ValueError(
                    f"{what} {ex.label} needs {end} tokens but the model's context is n_ctx={n_ctx}; "
                    "shorten it, or pass truncate='left' to drop its first tokens (with a warning)"
                )
            if rule.kind != "ragged" and bool((idx < cut).any()):
                raise ValueError(
                    f"{what} {ex.label}: a requested position falls in the {cut} tokens "
                    f"truncated to fit n_ctx={n_ctx}; request later positions"
                )
            idx = idx[idx >= cut]
            n_trunc += 1
        length = end - cut
        spans = None
        if ex.spans is not None:
            spans = {
                k: (min(max(s - cut, 0), length), min(max(e - cut, 0), length))
                for k, (s, e) in ex.spans.items()
            }
        out.append(Prepared(ex.tokens[cut:end], idx - cut, spans, ex, cut))
    if n_trunc:
        warnings.warn(
            f"{n_trunc} {what}(s) longer than n_ctx={n_ctx} were truncated from the left",
            stacklevel=3,
        )
    return out, rule.kind


# --------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted longest first; ties keep input order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def left_pad(
    seqs: Sequence[Int[Tensor, " _len"]],  # ragged: one length each
    pad_id: int = 0,
    device: Any = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None, Int[Tensor, " batch"]]:
    """Left-pad 1-D token tensors.

    Returns ``(tokens, attention_mask, offsets)``: ``attention_mask`` is None when no row needs
    padding (the forward is then exactly the unpadded one); ``offsets[i]`` is the number of pad
    tokens before row ``i``, so position ``p`` of example ``i`` is column ``p + offsets[i]``.
    """
    lens = torch.tensor([int(s.numel()) for s in seqs])
    width = int(lens.max())
    offsets = width - lens
    toks = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for j, s in enumerate(seqs):
        toks[j, width - s.numel() :] = s
    mask = None
    if int(offsets.max()) > 0:
        mask = (torch.arange(width)[None, :] >= offsets[:, None]).long()
    if device is not None:
        toks, offsets = toks.to(device), offsets.to(device)
        mask = mask.to(device) if mask is not None else None
    return toks, mask, offsets


def pad_token_id(model: HookedTransformer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS token, else 0.

    (Pad tokens are masked, so the choice never changes a real token's activations.)
    """
    tok = getattr(model, "tokenizer", None)
    pid = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pid is None:
        pid = getattr(tok, "eos_token_id", None) if tok is not None else None
    return int(pid) if pid is not None else 0


def model_device(model: HookedTransformer) -> torch.device:
    """The device input tokens go to (the embedding's)."""
    if hasattr(model, "W_E"):
        return model.W_E.device
    return torch.device(model.cfg.device or "cpu")


@dataclass
class Batch:
    """One padded batch of :func:`run_batches`.

    ``index``: the input indices of its rows (sequences of similar length, longest first);
    ``tokens`` / ``attention_mask`` / ``offsets``: as :func:`left_pad` returns them, on the
    model's device.
    """

    index: list[int]
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"] | None
    offsets: Int[Tensor, " batch"]

    @property
    def width(self) -> int:
        """Padded length."""
        return int(self.tokens.shape[1])

    def gather_index(
        self,
        positions: Sequence[Int[Tensor, " _k"]],  # ragged: one count per row
    ) -> tuple[Int[Tensor, "batch 1"], Int[Tensor, "batch kmax"], Int[Tensor, " batch"]]:
        """Indices that gather each row's positions from a ``[batch, pos, ...]`` hook tensor.

        ``positions[j]``: row ``j``'s positions in its own coordinates. Returns ``(rows, cols,
        counts)`` on the batch's device: ``x[rows, cols]`` is ``[batch, kmax, ...]``, of which the
        first ``counts[j]`` entries of row ``j`` are its positions (the rest repeat its first
        real token and are to be ignored).
        """
        dev = self.offsets.device
        counts = torch.tensor([int(p.numel()) for p in positions])
        cols = torch.zeros(len(positions), max(int(counts.max()), 1), dtype=torch.long)
        for j, p in enumerate(positions):
            cols[j, : p.numel()] = p
        cols = cols.to(dev) + self.offsets[:, None]
        rows = torch.arange(len(positions), device=dev)[:, None]
        return rows, cols, counts.to(dev)

    def position_mask(self, positions: Sequence[Int[Tensor, " _k"]]) -> Bool[Tensor, "batch pos"]:
        """Boolean ``[batch, pos]`` mask of each row's positions, in padded columns."""
        mask = torch.zeros(self.tokens.shape, dtype=torch.bool)
        off = self.offsets.cpu()
        for j, p in enumerate(positions):
            mask[j, p + off[j]] = True
        return mask.to(self.tokens.device)

    def weights(
        self,
        positions: Sequence[Int[Tensor, " _k"]],
        *,
        mean: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> Float[Tensor, "batch pos"]:
        """``[batch, pos]`` weights (CPU): 1 at each row's (distinct) positions, or ``1/k`` with ``mean``."""
        w = torch.zeros(self.tokens.shape, dtype=dtype)
        off = self.offsets.cpu()
        for j, p in enumerate(positions):
            p = p.unique()
            w[j, p + off[j]] = 1.0 / len(p) if mean else 1.0
        return w


def stop_layer(model: HookedTransformer, names: Sequence[str]) -> int | None:
    """``stop_at_layer`` for a forward that reads ``names``: one past the deepest block read, or
    None when a hook after the blocks (``ln_final.*``, ``unembed.*``) is read."""
    deepest = -1
    for name in names:
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            deepest = max(deepest, int(m.group(1)))
        elif name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            continue
        else:  # ln_final.* or anything after the blocks: run everything (the unembed is skipped)
            return None
    return deepest + 1


def run_batches(
    model: HookedTransformer,
    seqs: Sequence[Int[Tensor, " _len"] | Prepared],  # ragged: one length each
    names: Sequence[str],
    make_reader: Callable[[Batch], HookFn],
    *,
    batch_size: int = 16,
    bucket: bool = True,
    stop_at_layer: int | None | Literal["auto"] = "auto",
    hooks: Callable[[Batch], Sequence[tuple[str | Callable, HookFn]]] | None = None,
    pad_id: int | None = None,
    progress: bool = False,
    desc: str = "forward",
) -> Iterator[Batch]:
    """Run ``seqs`` (1-D token tensors or :class:`Prepared` examples) through ``model`` in
    left-padded batches, reading the hook points ``names``.

    For each batch, ``make_reader(batch)`` returns a TL hook function ``(tensor, hook) -> None``
    attached (through a names filter) to every hook point in ``names``; ``hooks(batch)`` may add
    intervention hooks (e.g. ablations built for this batch's padding), which run before the
    reader on a shared hook point. Yields each :class:`Batch` after its forward pass (collect
    what the reader stored). ``bucket``: group sequences by length (:func:`length_buckets`) or
    keep input order. ``stop_at_layer="auto"``: :func:`stop_layer` of ``names``. No gradients
    (``torch.inference_mode``); the unembedding is never computed (``return_type=None``).
    """
    from tqdm.auto import tqdm

    tokens = [s.tokens if isinstance(s, Prepared) else s for s in seqs]
    wanted = frozenset(names)
    device = model_device(model)
    pid = pad_token_id(model) if pad_id is None else pad_id
    stop = stop_layer(model, list(wanted)) if stop_at_layer == "auto" else stop_at_layer
    if bucket:
        groups = length_buckets([int(s.numel()) for s in tokens], batch_size)
    else:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        groups = [list(range(k, min(k + batch_size, len(tokens)))) for k in range(0, len(tokens), batch_size)]
    logger.debug("run_batches: %d sequences in %d batches, stop_at_layer=%s", len(tokens), len(groups), stop)
    with torch.inference_mode():
        for idx in tqdm(groups, desc=desc, disable=not progress, leave=False):
            toks, mask, offsets = left_pad([tokens[i] for i in idx], pid, device)
            batch = Batch(idx, toks, mask, offsets)
            fwd = list(hooks(batch)) if hooks is not None else []
            fwd.append((lambda n: n in wanted, make_reader(batch)))
            kwargs: dict[str, Any] = {"attention_mask": mask}
            if stop is not None:
                kwargs["stop_at_layer"] = stop
            with fast_forward(model):
                _run_with_hooks(model, toks, fwd, return_type=None, **kwargs)
            yield batch


def _run_with_hooks(
    model: HookedTransformer, toks: Tensor, fwd: list[tuple[Any, HookFn]], **kwargs: Any
) -> Any:
    """``model.run_with_hooks(toks, fwd_hooks=fwd, **kwargs)``, clearing only the hook points it hooked.

    TransformerLens's ``hooks()`` context adds the hooks at a new context level and, on the way
    out, calls ``remove_hooks`` on every hook point of the model (~800 on a 30-layer model, about
    10 ms on a CPU per call, paid once per batch); here the same hooks are added the same way
    (``_enable_hook``) and removed at that level from the points that hold any, with the same
    end state (``is_caching`` off, contexts kept). Models without that machinery go through
    ``run_with_hooks``."""
    if not (isinstance(getattr(model, "hook_dict", None), dict) and hasattr(model, "_enable_hook")):
        return model.run_with_hooks(toks, fwd_hooks=fwd, **kwargs)
    model.context_level += 1
    level = model.context_level
    try:
        for name, hook in fwd:
            model._enable_hook(name=name, hook=hook, dir="fwd")
        return model.forward(toks, **kwargs)
    finally:
        for hp in model.hook_dict.values():
            if hp.fwd_hooks or hp.bwd_hooks:
                hp.remove_hooks("both", including_permanent=False, level=level)
        model.is_caching = False
        model.context_level -= 1


def screen_nonfinite(
    rows: dict[int, Tensor],
    examples: Sequence[Example],
    on_nonfinite: Validated[Literal["raise", "nan"]],
    what: str,
    *,
    noun: str = "example",
    hint: str = "check the model dtype (try dtype='float32') or the inputs",
) -> dict[int, Tensor]:
    """Check each example's read-out (``rows``: input index -> values) for NaN/inf.

    Offending examples (named through ``examples[i].label``) raise a
    :class:`NonFiniteActivationError` with ``on_nonfinite="raise"``; with ``"nan"`` their values
    are set to NaN and a warning names them. Returns the (screened) rows.
    """
    bad = [i for i, v in rows.items() if not bool(torch.isfinite(v).all())]
    if not bad:
        return rows
    names = ", ".join(examples[i].label for i in sorted(bad))
    msg = f"NaN/inf {what} for {noun}(s) {names}"
    if on_nonfinite == "raise":
        raise NonFiniteActivationError(
            f"{msg}; {hint}, or pass on_nonfinite='nan' to keep going with NaN rows"
        )
    warnings.warn(msg + "; their values were set to NaN", stacklevel=3)
    return {i: torch.full_like(v, math.nan) if i in bad else v for i, v in rows.items()}


# --------------------------------------------------------------------------------------
# hook points and the final norm
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookSpec:
    """A resolved read-out: the TL hook point to hook, and whether :func:`final_norm` is applied.

    ``label`` is what the user asked for (e.g. ``"final_norm_weighted"``), ``layer`` the block
    the hook point belongs to.
    """

    name: str
    label: str
    layer: int | None
    final_norm: bool = False

    def apply(
        self, model: HookedTransformer, x: Float[Tensor, "... d_model"]
    ) -> Float[Tensor, "... d_model"]:
        """The feature this read-out means, from the hook point's tensor ``x``."""
        return final_norm(model, x) if self.final_norm else x


def _check_layer(model: HookedTransformer, layer: int) -> int:
    n = model.cfg.n_layers
    if not -n <= layer < n:
        raise ValueError(f"layer={layer} is out of range for a model with {n} layers")
    return layer % n


def resolve_hook(model: HookedTransformer, hook: str, layer: int | None = None) -> HookSpec:
    """Resolve a user hook name (with an optional ``{L}`` placeholder) to a :class:`HookSpec`.

    ``"final_norm_weighted"`` is the final norm's output (:func:`final_norm`: normalisation,
    ``ln_final.w`` and ``ln_final.b``) of the last block's residual stream, read at
    ``blocks.{n_layers-1}.hook_resid_post``; it raises if the model has no final norm weight
    (layer norms folded: reload with ``fold_ln=False``).
    """
    n = model.cfg.n_layers
    if hook == FINAL_NORM_WEIGHTED:
        ln = getattr(model, "ln_final", None)
        if ln is None:
            raise ValueError(
                f"hook {FINAL_NORM_WEIGHTED!r} needs a final norm, but this model has "
                f"normalization_type={model.cfg.normalization_type!r}; use "
                f"hook='blocks.{{L}}.hook_resid_post' instead"
            )
        if getattr(ln, "w", None) is None:
            raise ValueError(
                f"hook {FINAL_NORM_WEIGHTED!r} needs the final norm weight ln_final.w, but the "
                f"model was loaded with its layer norms folded ({type(ln).__name__} has no weight); "
                "reload it with cliff_lens.load_model(..., fold_ln=False)"
            )
        return HookSpec(f"blocks.{n - 1}.hook_resid_post", FINAL_NORM_WEIGHTED, n - 1, True)
    name = hook
    if "{L}" in hook or "{l}" in hook:
        if layer is None:
            raise ValueError(f"hook {hook!r} has a layer placeholder; pass layer=<int> or layers=[...]")
        layer = _check_layer(model, layer)
        name = hook.replace("{L}", str(layer)).replace("{l}", str(layer))
    if name not in model.hook_dict:
        close = [k for k in model.hook_dict if k.split(".")[-1] == name.split(".")[-1]][:3]
        raise ValueError(
            f"hook {name!r} does not exist in this model; examples of valid names: "
            f"{close or list(model.hook_dict)[:3]} (or 'final_norm_weighted')"
        )
    m = re.match(r"blocks\.(\d+)\.", name)
    hl = int(m.group(1)) if m else (n - 1 if name.startswith("ln_final") else None)
    return HookSpec(name, hook, hl)


def final_norm(model: HookedTransformer, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """The model's final norm applied to a residual-stream tensor, without firing any hook.

    Exactly what ``model.ln_final`` computes (so what the unembedding reads, and the last entry
    of Hugging Face ``hidden_states``): centring (LayerNorm only), division by the RMS (``eps``
    from the module), then ``* ln_final.w`` and ``+ ln_final.b`` where the module has them
    (RMSNorm has no bias; folded ``LNPre`` / ``RMSPre`` norms have neither). Like TL, the
    normalisation runs in float32 for low-precision models and the result has the model's dtype.
    The module class decides the maths (an ``"LN"`` model with ``final_rms=True`` ends in RMSNorm).
    """
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

    ln = getattr(model, "ln_final", None)
    if not isinstance(ln, LayerNorm | LayerNormPre | RMSNorm | RMSNormPre):
        raise ValueError(
            f"the final norm is needed here, but this model has normalization_type="
            f"{model.cfg.normalization_type!r} (ln_final: {type(ln).__name__}); read the raw residual "
            "stream instead (hook='blocks.{L}.hook_resid_post' / layer_input='resid')"
        )
    x = resid
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    if isinstance(ln, LayerNorm | LayerNormPre):
        x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    x = (x / scale).to(model.cfg.dtype)
    w, b = getattr(ln, "w", None), getattr(ln, "b", None)
    if w is not None and b is not None:
        return x * w + b
    return x * w if w is not None else x
