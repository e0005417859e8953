"""Batched, memory-bounded activation extraction from a ``HookedTransformer``.

:func:`extract_activations` is a reader on the engine of :mod:`cliff_lens.readout`: the inputs
(``TokenizedRollout`` records, 1-D token tensors, or strings) go in length-bucketed, LEFT-padded
batches with an attention mask, and only what was asked for is kept:

* only the needed hook points get a hook (a ``names_filter``; nothing else is cached);
* the chosen positions are gathered INSIDE the hook and moved to CPU per batch, so the
  full ``[batch, pos, d_model]`` residual never accumulates;
* the forward pass stops right after the deepest block that is read (``stop_at_layer``)
  and never computes the final norm module or the unembedding;
* sequences are trimmed after the last position that is read (the model is causal, so
  later tokens cannot change earlier activations).

``tests/test_activations.py`` checks that batched == one-at-a-time extraction (max abs diff
< 1e-5 in fp32) for rotary and learned positional embeddings.

Hooks:
    ``"blocks.{L}.hook_resid_post"`` (any TL hook name, optionally with a ``{L}`` layer
    placeholder), ``"ln_final.hook_normalized"`` and ``"final_norm_weighted"`` (the final norm's
    output, :func:`cliff_lens.readout.final_norm` of the last residual: normalisation times
    ``ln_final.w`` plus ``ln_final.b`` -- the last entry of HF ``hidden_states``, which is what
    the paper's probe reads; needs ``fold_ln=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, cast

import torch
from jaxtyping import Float
from torch import Tensor

from ._typing import Validated
from .readout import (
    FINAL_NORM_WEIGHTED,
    SPAN_NAMES,
    Batch,
    NonFiniteActivationError,
    PositionSpec,
    left_pad,
    length_buckets,
    prepare,
    resolve_hook,
    run_batches,
    screen_nonfinite,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "extract_activations",
    "resolve_hook",
    "FINAL_NORM_WEIGHTED",
    "PositionSpec",
    "SPAN_NAMES",
    "NonFiniteActivationError",
    "left_pad",
    "length_buckets",
]


# --------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------


def extract_activations(
    model: HookedTransformer,
    batch,
    *,
    hook: str = "blocks.{L}.hook_resid_post",
    layer: int | None = None,
    layers: Sequence[int] | None = None,
    positions: PositionSpec = "last",
    batch_size: int = 16,
    progress: bool = True,
    truncate: Literal["error", "left"] = "error",
    on_nonfinite: Validated[Literal["raise", "nan"]] = "raise",
    dtype: torch.dtype | None = None,
) -> (
    Float[Tensor, "n d_model"]
    | Float[Tensor, "n n_layers d_model"]
    | Float[Tensor, "n k d_model"]
    | Float[Tensor, "n n_layers k d_model"]
    | list[Float[Tensor, "... d_model"]]
):
    """Activations of ``model`` at one hook (or one hook per layer) at chosen positions.

    Args:
        model: a ``HookedTransformer``.
        batch: list of ``TokenizedRollout`` (``.tokens``, ``.spans``), 1-D token tensors,
            token lists, or strings (tokenised with ``model.to_tokens``); or an ``[n, pos]`` tensor.
        hook: a TL hook name, optionally with a ``{L}`` layer placeholder
            (``"blocks.{L}.hook_resid_post"``), ``"ln_final.hook_normalized"``, or
            ``"final_norm_weighted"`` (the final norm's output, weight and bias included:
            :func:`cliff_lens.readout.final_norm`; the paper's probe input; needs ``fold_ln=False``).
        layer: the layer for ``{L}`` (negative counts from the end). Default: the last layer.
        layers: several layers at once (one forward pass); adds a layer dimension after ``n``.
        positions: the :mod:`cliff_lens.readout` grammar: ``"last"`` (last real token),
            ``"all"``, a span name (``"thinking"``, ...), ``"last:<span>"`` (last token of a
            span, e.g. ``"last:end_of_thinking"``; ``"<span>_last"`` too), an int, a list of
            indices (negative = from the end), or a ``(start, end)`` range inside the sequence.
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
    if layers is not None:
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

    prepared, kind = prepare(model, batch, positions, truncate=truncate)
    by_name = {s.name: s for s in specs}
    if len(by_name) != len(specs):
        raise ValueError(f"duplicate layers in layers={layers}")

    examples = [p.example for p in prepared]
    shown = specs[0].label if specs[0].final_norm else specs[0].name
    results: list[Tensor | None] = [None] * len(prepared)  # per example: [n_layers, k, d]
    store: dict[str, Tensor] = {}

    def make_reader(batch: Batch):
        rows, cols, _ = batch.gather_index([prepared[i].positions for i in batch.index])

        def reader(x: Float[Tensor, "batch pos d_model"], hook) -> None:
            d = x.device  # blocks may sit on several devices
            g = by_name[hook.name].apply(
                model, x[rows.to(d), cols.to(d)]
            )  # [b, kmax, d_model] gathered in the hook
            store[hook.name] = g.to("cpu")

        return reader

    for batch in run_batches(
        model,
        prepared,
        list(by_name),
        make_reader,
        batch_size=batch_size,
        progress=progress,
        desc="extract",
    ):
        stacked = torch.stack([store.pop(s.name) for s in specs], dim=1)  # [b, n_layers, kmax, d]
        rows = {i: stacked[j, :, : prepared[i].positions.numel()] for j, i in enumerate(batch.index)}
        for i, a in screen_nonfinite(rows, examples, on_nonfinite, f"activations at hook {shown!r}").items():
            results[i] = a.clone() if kind == "ragged" else a

    def finish(a: Tensor) -> Tensor:
        return a.to(dtype) if dtype is not None else a

    done = cast(list[Tensor], results)  # run_batches read every example
    if kind == "ragged":
        return [finish(r if multi else r[0]) for r in done]
    out = torch.stack(done)  # [n, n_layers, k, d]
    if kind == "single":
        out = out[:, :, 0]  # [n, n_layers, d]
    return finish(out if multi else out[:, 0])
