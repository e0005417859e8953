"""Batched, memory-bounded activation extraction from a ``HookedTransformer``.

:func:`extract_activations` runs a list of token sequences (``TokenizedRollout`` records,
1-D token tensors, or strings) through the model in length-bucketed, LEFT-padded batches
with an attention mask, and keeps only what was asked for:

* only the needed hook points get a hook (a ``names_filter``; nothing else is cached);
* the chosen positions are gathered INSIDE the hook and moved to CPU per batch, so the
  full ``[batch, pos, d_model]`` residual never accumulates;
* the forward pass stops right after the deepest block that is read (``stop_at_layer``),
  and never computes the unembedding when a final-norm hook is read;
* sequences are trimmed after the last position that is read (the model is causal, so
  later tokens cannot change earlier activations).

TransformerLens handles left padding when an explicit ``attention_mask`` is passed: pad
keys are masked and rotary / learned positions are shifted so each sequence starts at
position 0. ``tests/test_activations.py`` checks that batched == one-at-a-time extraction
(max abs diff < 1e-5 in fp32) for rotary and learned positional embeddings.

Hooks:
    ``"blocks.{L}.hook_resid_post"`` (any TL hook name, optionally with a ``{L}`` layer
    placeholder), ``"ln_final.hook_normalized"`` and ``"final_norm_weighted"``
    (= ``ln_final.hook_normalized * model.ln_final.w``: the last entry of HF
    ``hidden_states``, which is what the paper's probe reads; needs ``fold_ln=False``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .fast_forward import fast_forward

__all__ = [
    "extract_activations",
    "resolve_hook",
    "FINAL_NORM_WEIGHTED",
    "PositionSpec",
    "SPAN_NAMES",
    "NonFiniteActivationError",
]

FINAL_NORM_WEIGHTED = "final_norm_weighted"
SPAN_NAMES = ("prompt", "thinking", "end_of_thinking", "answer")

PositionSpec = str | int | tuple[int, int] | Sequence[int]


class NonFiniteActivationError(ValueError):
    """NaN or inf activations were found; the message names the example(s)."""


# --------------------------------------------------------------------------------------
# hook resolution
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookSpec:
    """A resolved read-out: the TL hook point to attach to and an optional per-feature weight."""

    name: str  # the TL hook point
    label: str  # what the user asked for (e.g. "final_norm_weighted")
    layer: int | None
    weighted: bool = False  # multiply by model.ln_final.w


def resolve_hook(model, hook: str, layer: int | None = None) -> HookSpec:
    """Resolve a user hook name (with an optional ``{L}`` placeholder) to a TL hook point.

    ``"final_norm_weighted"`` resolves to ``ln_final.hook_normalized`` with the final norm
    weight applied; it raises if the model has no ``ln_final.w`` (folded layer norm).
    """
    if hook == FINAL_NORM_WEIGHTED:
        ln = getattr(model, "ln_final", None)
        if ln is None or not hasattr(ln, "hook_normalized"):
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
        return HookSpec("ln_final.hook_normalized", FINAL_NORM_WEIGHTED, model.cfg.n_layers - 1, True)
    name = hook
    if "{L}" in hook or "{l}" in hook:
        if layer is None:
            raise ValueError(f"hook {hook!r} has a layer placeholder; pass layer=<int> or layers=[...]")
        n = model.cfg.n_layers
        if not -n <= layer < n:
            raise ValueError(f"layer={layer} is out of range for a model with {n} layers")
        layer = layer % n
        name = hook.replace("{L}", str(layer)).replace("{l}", str(layer))
    if name not in model.hook_dict:
        close = [k for k in model.hook_dict if k.split(".")[-1] == name.split(".")[-1]][:3]
        raise ValueError(
            f"hook {name!r} does not exist in this model; examples of valid names: "
            f"{close or list(model.hook_dict)[:3]} (or 'final_norm_weighted')"
        )
    m = re.match(r"blocks\.(\d+)\.", name)
    hl = int(m.group(1)) if m else (model.cfg.n_layers - 1 if name.startswith("ln_final") else None)
    return HookSpec(name, hook, hl)


def _stop_at_layer(model, specs: Sequence[HookSpec]) -> tuple[int | None, bool]:
    """(stop_at_layer, needs_ln_final) for a set of hook points."""
    deepest = -1
    for s in specs:
        m = re.match(r"blocks\.(\d+)\.", s.name)
        if m:
            deepest = max(deepest, int(m.group(1)))
        elif s.name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            continue
        else:  # ln_final.* or anything after the blocks: run everything, skip the unembed
            return None, True
    return deepest + 1, False


# --------------------------------------------------------------------------------------
# inputs: tokens, spans, positions
# --------------------------------------------------------------------------------------


def _as_items(model, batch) -> list[tuple[Tensor, dict | None, Any]]:
    """Normalise the input to a list of (1-D long tokens, spans or None, id)."""
    if isinstance(batch, Tensor):
        if batch.ndim == 1:
            batch = [batch]
        elif batch.ndim == 2:
            batch = list(batch)
        else:
            raise ValueError(f"token tensor must be 1-D or 2-D [n, pos], got shape {tuple(batch.shape)}")
    if not isinstance(batch, str | bytes | Sequence) and hasattr(batch, "__iter__"):
        batch = list(batch)  # generators / iterators of examples
    if isinstance(batch, str | bytes) or not isinstance(batch, Sequence):
        raise TypeError(
            f"batch must be a list of TokenizedRollout, 1-D token tensors or strings, got {type(batch).__name__}"
        )
    items = []
    for i, x in enumerate(batch):
        spans = None
        ident: Any = i
        if isinstance(x, str):
            if getattr(model, "tokenizer", None) is None:
                raise ValueError("string inputs need model.tokenizer; pass token tensors instead")
            toks = model.to_tokens(x)[0]
        elif hasattr(x, "tokens") and hasattr(x, "spans"):
            toks, spans = x.tokens, dict(x.spans)
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
        if toks.numel() == 0:
            raise ValueError(f"example {_name(ident, i)}: empty token sequence; drop it before extraction")
        items.append((toks.long().cpu(), spans, ident))
    if not items:
        raise ValueError("empty batch: nothing to extract; pass at least one example")
    return items


def _name(ident, i) -> str:
    return f"{i}" if ident == i else f"{i} (id={ident!r})"


_Kind = Literal["single", "fixed", "ragged"]


def _resolve_positions(
    positions: PositionSpec, toks: Tensor, spans: dict | None, i: int, ident
) -> tuple[Tensor, _Kind]:
    """Absolute positions to read for one example, and the output kind."""
    n = toks.numel()
    where = f"example {_name(ident, i)}"
    if isinstance(positions, str):
        if positions == "last":
            return torch.tensor([n - 1]), "single"
        if positions == "all":
            return torch.arange(n), "ragged"
        last = positions.startswith("last:")
        span_name = positions[5:] if last else positions
        if span_name not in SPAN_NAMES:
            raise ValueError(
                f"positions={positions!r} is not understood; use 'last', 'all', a span name "
                f"{SPAN_NAMES}, 'last:<span>', an (start, end) tuple or a list of indices"
            )
        if spans is None:
            raise ValueError(
                f"{where}: positions={positions!r} needs span information; pass TokenizedRollout "
                "records (templates.ReasoningTemplate.tokenize) instead of bare token tensors"
            )
        if span_name not in spans:
            raise ValueError(f"{where}: has no span {span_name!r} (spans: {sorted(spans)})")
        s, e = spans[span_name]
        if not 0 <= s <= e <= n:
            raise ValueError(f"{where}: span {span_name}={(s, e)} lies outside its {n} tokens")
        if last:
            if e == s:
                raise ValueError(
                    f"{where}: span {span_name!r} is empty (e.g. a rollout without thinking); "
                    "filter such rollouts out or read another span"
                )
            return torch.tensor([e - 1]), "single"
        return torch.arange(s, e), "ragged"
    if isinstance(positions, int):
        idx, kind = [positions], "single"
    elif isinstance(positions, tuple) and len(positions) == 2 and all(isinstance(p, int) for p in positions):
        return torch.arange(n)[positions[0] : positions[1]], "ragged"
    elif isinstance(positions, Sequence) and all(isinstance(p, int) for p in positions):
        idx, kind = list(positions), "fixed"
        if not idx:
            raise ValueError("positions=[] selects nothing; pass at least one index")
    else:
        raise TypeError(f"positions={positions!r} has an unsupported type {type(positions).__name__}")
    out = []
    for p in idx:
        q = p + n if p < 0 else p
        if not 0 <= q < n:
            raise ValueError(f"{where}: position {p} is out of range for its {n} tokens")
        out.append(q)
    return torch.tensor(out), kind


@dataclass
class _Prepared:
    tokens: Tensor  # 1-D, trimmed (and left-truncated if needed)
    idx: Tensor  # positions to read, relative to `tokens`
    ident: Any


def _prepare(
    model,
    batch,
    positions: PositionSpec,
    truncate: Literal["error", "left"],
) -> tuple[list[_Prepared], _Kind]:
    items = _as_items(model, batch)
    n_ctx = model.cfg.n_ctx
    prepared, kinds = [], set()
    n_trunc = 0
    for i, (toks, spans, ident) in enumerate(items):
        idx, kind = _resolve_positions(positions, toks, spans, i, ident)
        kinds.add(kind)
        end = int(idx.max()) + 1 if idx.numel() else 1
        cut = max(0, end - n_ctx)
        if cut:
            if truncate != "left":
                raise ValueError(
                    f"example {_name(ident, i)} needs {end} tokens but the model's context is n_ctx={n_ctx}; "
                    "shorten it, or pass truncate='left' to drop its first tokens (with a warning)"
                )
            if kind != "ragged" and bool((idx < cut).any()):
                raise ValueError(
                    f"example {_name(ident, i)}: a requested position falls in the {cut} tokens "
                    f"truncated to fit n_ctx={n_ctx}; request later positions"
                )
            idx = idx[idx >= cut]
            n_trunc += 1
        prepared.append(_Prepared(toks[cut:end], idx - cut, ident))
    if n_trunc:
        warnings.warn(
            f"{n_trunc} example(s) longer than n_ctx={n_ctx} were truncated from the left",
            stacklevel=3,
        )
    if len(kinds) > 1:  # e.g. fixed in some, never happens with one spec; be safe
        kinds = {"ragged"}
    return prepared, kinds.pop()


# --------------------------------------------------------------------------------------
# batching and the hooked forward pass (shared with trajectory.py)
# --------------------------------------------------------------------------------------


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted longest first)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def left_pad(
    seqs: Sequence[Tensor], pad_id: int = 0
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None, Int[Tensor, " batch"]]:
    """Left-pad 1-D token tensors; returns (tokens, attention_mask or None if no padding, pads)."""
    lens = torch.tensor([s.numel() for s in seqs])
    width = int(lens.max())
    pads = width - lens
    toks = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for j, s in enumerate(seqs):
        toks[j, width - s.numel() :] = s
    if int(pads.max()) == 0:
        return toks, None, pads
    mask = (torch.arange(width)[None, :] >= pads[:, None]).long()
    return toks, mask, pads


def run_batches(
    model,
    seqs: Sequence[Tensor],
    read_names: Sequence[str],
    stop_at_layer: int | None,
    make_reader: Callable[[list[int], Tensor], Callable[[Tensor, Any], None]],
    *,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "extract",
) -> Iterator[list[int]]:
    """Run ``seqs`` through ``model`` in length-bucketed left-padded batches.

    For each batch, ``make_reader(batch_indices, pads)`` returns a TL hook function that is
    attached (through a names filter) to every hook point in ``read_names``. Yields the
    original indices of each finished batch (so callers can collect per batch).
    """
    from tqdm.auto import tqdm

    names = set(read_names)
    device = model.cfg.device
    pad_id = 0
    batches = length_buckets([s.numel() for s in seqs], batch_size)
    with torch.inference_mode():
        for b_idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
            toks, mask, pads = left_pad([seqs[i] for i in b_idx], pad_id)
            toks = toks.to(device)
            if mask is not None:
                mask = mask.to(device)
            reader = make_reader(b_idx, pads.to(device))
            kwargs: dict[str, Any] = {"attention_mask": mask}
            if stop_at_layer is not None:
                kwargs["stop_at_layer"] = stop_at_layer
            with fast_forward(model):
                model.run_with_hooks(
                    toks,
                    return_type=None,
                    fwd_hooks=[(lambda n: n in names, reader)],
                    **kwargs,
                )
            yield b_idx


# --------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------


def extract_activations(
    model,
    batch,
    *,
    hook: str = "blocks.{L}.hook_resid_post",
    layer: int | None = None,
    layers: Sequence[int] | None = None,
    positions: PositionSpec = "last",
    batch_size: int = 16,
    progress: bool = True,
    truncate: Literal["error", "left"] = "error",
    on_nonfinite: Literal["raise", "nan"] = "raise",
    dtype: torch.dtype | None = None,
) -> (
    Float[Tensor, "n d_model"]
    | Float[Tensor, "n n_layers d_model"]
    | Float[Tensor, "n k d_model"]
    | list[Tensor]
):
    """Activations of ``model`` at one hook (or one hook per layer) at chosen positions.

    Args:
        model: a ``HookedTransformer``.
        batch: list of ``TokenizedRollout`` (``.tokens``, ``.spans``), 1-D token tensors,
            token lists, or strings (tokenised with ``model.to_tokens``); or an ``[n, pos]`` tensor.
        hook: a TL hook name, optionally with a ``{L}`` layer placeholder
            (``"blocks.{L}.hook_resid_post"``), ``"ln_final.hook_normalized"``, or
            ``"final_norm_weighted"`` (``ln_final.hook_normalized * ln_final.w``, the paper's
            probe input; needs ``fold_ln=False``).
        layer: the layer for ``{L}`` (negative counts from the end). Default: the last layer.
        layers: several layers at once (one forward pass); adds a layer dimension after ``n``.
        positions: ``"last"`` (last real token), ``"all"``, a span name (``"thinking"``, ...),
            ``"last:<span>"`` (last token of a span, e.g. ``"last:end_of_thinking"``), an int,
            a list of indices (negative = from the end), or a ``(start, end)`` slice.
        batch_size: sequences per forward pass (batches are bucketed by length).
        progress: show a tqdm progress bar.
        truncate: what to do with a sequence longer than ``n_ctx``: ``"error"`` (default) or
            ``"left"`` (drop its first tokens, warn; span positions shift accordingly).
        on_nonfinite: ``"raise"`` (default) a :class:`NonFiniteActivationError` naming the
            examples with NaN/inf activations, or ``"nan"``: set those examples to NaN, warn,
            and go on (drop them later with ``acts.isfinite().flatten(1).all(1)``).
        dtype: cast the result (default: keep the model's dtype).

    Returns:
        * ``"last"``, an int, ``"last:<span>"``: ``[n, d_model]`` (``[n, n_layers, d_model]`` with ``layers``)
        * a list of k indices: ``[n, k, d_model]`` (``[n, n_layers, k, d_model]``)
        * ``"all"``, a span, a slice: a list of ``[len_i, d_model]`` (``[n_layers, len_i, d_model]``)

        always on CPU, in the input order.
    """
    if layers is not None and layer is not None:
        raise ValueError("pass either layer=... or layers=[...], not both")
    multi = layers is not None
    if multi:
        layers = list(layers)
        if not layers:
            raise ValueError("layers=[] selects nothing; pass at least one layer")
        if "{L}" not in hook and "{l}" not in hook:
            raise ValueError(f"layers=[...] needs a hook with a {{L}} placeholder, got hook={hook!r}")
        specs = [resolve_hook(model, hook, lay) for lay in layers]
    else:
        if layer is None and ("{L}" in hook or "{l}" in hook):
            layer = model.cfg.n_layers - 1
        specs = [resolve_hook(model, hook, layer)]
    if on_nonfinite not in ("raise", "nan"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'nan', got {on_nonfinite!r}")

    prepared, kind = _prepare(model, batch, positions, truncate)
    seqs = [p.tokens for p in prepared]
    stop, _ = _stop_at_layer(model, specs)
    by_name = {s.name: k for k, s in enumerate(specs)}
    if len(by_name) != len(specs):
        raise ValueError(f"duplicate layers in layers={layers}")
    weight = None
    if any(s.weighted for s in specs):
        weight = model.ln_final.w.detach()

    n = len(prepared)
    results: list[Tensor | None] = [None] * n  # per example: [n_layers, k, d]
    store: dict[str, Tensor] = {}

    def make_reader(b_idx: list[int], pads: Tensor):
        kmax = max(prepared[i].idx.numel() for i in b_idx)
        cols = torch.zeros(len(b_idx), max(kmax, 1), dtype=torch.long)
        for j, i in enumerate(b_idx):
            k = prepared[i].idx.numel()
            cols[j, :k] = prepared[i].idx
        cols = cols.to(pads.device) + pads[:, None]
        rows = torch.arange(len(b_idx), device=pads.device)[:, None]

        def reader(x: Tensor, hook) -> None:
            g = x[rows, cols]  # [b, kmax, d] gathered inside the hook
            if weight is not None and specs[by_name[hook.name]].weighted:
                g = g * weight
            store[hook.name] = g.to("cpu")

        return reader

    for b_idx in run_batches(
        model, seqs, [s.name for s in specs], stop, make_reader, batch_size=batch_size, progress=progress
    ):
        stacked = torch.stack([store.pop(s.name) for s in specs], dim=1)  # [b, n_layers, kmax, d]
        bad = []
        for j, i in enumerate(b_idx):
            a = stacked[j, :, : prepared[i].idx.numel()]
            if not bool(torch.isfinite(a).all()):
                bad.append(i)
                a = torch.full_like(a, math.nan)
            results[i] = a.clone() if kind == "ragged" else a
        if bad:
            names = ", ".join(_name(prepared[i].ident, i) for i in sorted(bad))
            msg = f"NaN/inf activations at hook {specs[0].name!r} for example(s) {names}"
            if on_nonfinite == "raise":
                raise NonFiniteActivationError(
                    msg + "; check the model dtype (try dtype='float32') or the inputs, "
                    "or pass on_nonfinite='nan' to keep going with NaN rows"
                )
            warnings.warn(msg + "; their rows were set to NaN", stacklevel=2)

    def finish(a: Tensor) -> Tensor:
        return a.to(dtype) if dtype is not None else a

    if kind == "ragged":
        return [finish(r if multi else r[0]) for r in results]
    out = torch.stack(results)  # [n, n_layers, k, d]
    if kind == "single":
        out = out[:, :, 0]  # [n, n_layers, d]
        return finish(out if multi else out[:, 0])
    return finish(out if multi else out[:, 0])
