"""Head ablation: TransformerLens hooks on ``blocks.{l}.attn.hook_z``, head means, exact weight
edits (TransformerLens and Hugging Face) and per-head causal effects.

Modes (``mode=``):

``zero``
    The selected heads' ``z`` is set to 0.
``mean``
    The selected heads' ``z`` is replaced by its mean over a reference set
    (:func:`compute_head_means`, padding excluded; save it once with :func:`save_head_means`).
``paper_renorm``
    The selected heads' ``z`` is set to 0, then the layer's ``z`` at each position is rescaled to
    that position's original norm (over all heads and ``d_head``). Per position, so padding and
    the other examples of the batch never change a result.
``paper_renorm_global``
    The official RefusalCliff code's version: one rescale factor for the whole ``z`` tensor of the
    layer in the current forward pass (Frobenius norm over batch, positions -- padding included --
    heads and ``d_head``). Results depend on the batch composition and padding, and during
    KV-cached generation each step is renormalised on its own. Offered for fidelity only.

Positions (``positions=``): ``None``/``"all"`` (every position, the paper's setting), a
``(start, end)`` range, a list of indices, or a boolean ``[batch, pos]`` mask. Indices are
*absolute columns of the full token tensor the model has seen* (for a left-padded batch: columns
of the padded tensor). During KV-cached generation each forward pass only carries the new
tokens; the hooks read the cache offset from ``hook_attn_scores`` (key length - query length), so
positions keep their absolute meaning across steps; negative indices count from the end of the
sequence so far (``-1``: the newest token).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ._typing import Validated
from .fast_forward import fast_forward
from .heads import validate_heads
from .readout import (
    Batch,
    PositionSpec,
    as_examples,
    left_pad,
    length_buckets,
    model_device,
    pad_token_id,
    prepare,
    resolve_hook,
    run_batches,
    stop_layer,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "AblationMode",
    "ablation_hooks",
    "row_ablation_hooks",
    "head_mask",
    "ablate_heads",
    "compute_head_means",
    "save_head_means",
    "load_head_means",
    "ablated_weights",
    "export_ablated_hf",
    "positions_mask",
    "head_causal_effects",
    "CausalEffects",
    "attribution_vs_causal",
    "probe_scores",
]

AblationMode = Literal["zero", "mean", "paper_renorm", "paper_renorm_global"]
_MODES = ("zero", "mean", "paper_renorm", "paper_renorm_global")


# --------------------------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------------------------


def _means_tensor(model: HookedTransformer, means: Any) -> Tensor:
    if means is None:
        raise ValueError(
            "mode='mean' needs means=compute_head_means(model, reference_batch) (or load_head_means(path))"
        )
    m = means.means if hasattr(means, "means") else means
    if not isinstance(m, Tensor):
        m = torch.as_tensor(m)
    cfg = model.cfg
    want = (cfg.n_layers, cfg.n_heads, cfg.d_head)
    if tuple(m.shape) != want:
        raise ValueError(
            f"means has shape {tuple(m.shape)} but this model needs {want} ([n_layers, n_heads, d_head]); "
            "compute them on this model with compute_head_means"
        )
    return m.detach()


def _position_mask(
    positions: Any, batch: int, q: int, offset: int, device: torch.device
) -> Bool[Tensor, "batch q"] | None:
    """Which of the ``q`` new positions (absolute ``offset .. offset+q-1``) are selected."""
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    total = offset + q
    cols = torch.arange(offset, total, device=device)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        pm = positions.to(device)
        if pm.ndim == 1:
            pm = pm[None].expand(batch, -1)
        if pm.shape[0] != batch:
            raise ValueError(
                f"positions mask has batch size {pm.shape[0]} but the forward pass has {batch}; "
                "build the mask for this batch (positions_mask(...))"
            )
        out = torch.zeros((batch, q), dtype=torch.bool, device=device)
        hi = min(total, pm.shape[1])
        if hi > offset:
            out[:, : hi - offset] = pm[:, offset:hi]
        return out
    if isinstance(positions, tuple) and len(positions) == 2 and all(isinstance(v, int) for v in positions):
        s, e = positions
        s = s + total if s < 0 else s
        e = e + total if e < 0 else e
        sel = (cols >= s) & (cols < e)
    else:
        idx = torch.as_tensor(list(positions), dtype=torch.long, device=device)
        idx = torch.where(idx < 0, idx + total, idx)
        sel = torch.isin(cols, idx)
    return sel[None].expand(batch, q)


def _check_positions(positions: Any) -> Any:
    if positions is None or isinstance(positions, Tensor):
        if isinstance(positions, Tensor) and positions.dtype != torch.bool:
            positions = [int(p) for p in positions.flatten().tolist()]
        else:
            return positions
    if isinstance(positions, str):
        if positions != "all":
            raise ValueError(
                f"positions={positions!r}: hooks take 'all', (start, end), a list of indices or a bool "
                "[batch, pos] mask; for span names build a mask with positions_mask(model, records, span)"
            )
        return positions
    if isinstance(positions, tuple) and len(positions) == 2 and all(isinstance(v, int) for v in positions):
        s, e = positions
        if s >= 0 and e >= 0 and s >= e:
            raise ValueError(f"positions=(start, end)={positions} is empty; pass start < end")
        return positions
    try:
        idx = [int(p) for p in positions]
    except TypeError:
        raise TypeError(
            f"positions={positions!r} not understood; pass None, (start, end), a list or a bool mask"
        ) from None
    if not idx:
        raise ValueError("positions is an empty list; pass None for all positions or at least one index")
    return idx


def ablation_hooks(
    model: HookedTransformer,
    heads: Validated[Sequence[tuple[int, int]]],
    mode: Validated[AblationMode] = "zero",
    means: Any = None,
    positions: Any = None,
) -> list[tuple[str, Callable]]:
    """Forward hooks that ablate ``heads`` (``[(layer, head), ...]``), for ``run_with_hooks``,
    ``model.hooks(...)`` or generation.

    Returns one ``("blocks.{l}.attn.hook_z", fn)`` per layer touched (all that layer's selected
    heads are edited in one vectorised op), plus a shape-reading hook on
    ``blocks.{l}.attn.hook_attn_scores`` when ``positions`` is restricted (it records the KV-cache
    offset so indices stay absolute during generation). See the module docstring for modes and
    positions. :func:`row_ablation_hooks` ablates a different head set in each batch row.
    """
    hs = validate_heads(model, heads)
    cfg = model.cfg
    mask = torch.zeros((1, cfg.n_layers, cfg.n_heads), dtype=torch.bool)
    for lay, h in hs:
        mask[0, lay, h] = True
    return _mask_hooks(model, mask, mode, means, positions)


def head_mask(
    model: HookedTransformer, head_sets: Sequence[Sequence[tuple[int, int]]]
) -> Bool[Tensor, "rows n_layers n_heads"]:
    """One boolean ``[n_layers, n_heads]`` mask per head set: ``True`` where a head is ablated."""
    cfg = model.cfg
    mask = torch.zeros((len(head_sets), cfg.n_layers, cfg.n_heads), dtype=torch.bool)
    for i, hs in enumerate(head_sets):
        for lay, h in validate_heads(model, hs) if len(hs) else ():
            mask[i, lay, h] = True
    return mask


def row_ablation_hooks(
    model: HookedTransformer,
    head_sets: Sequence[Sequence[tuple[int, int]]],
    mode: Validated[AblationMode] = "zero",
    means: Any = None,
    positions: Any = None,
) -> list[tuple[str, Callable]]:
    """Forward hooks that ablate ``head_sets[i]`` in row ``i`` of the batch (one head set per
    row; an empty set leaves its row untouched), so that one forward pass or one generation call
    carries several ablation settings side by side.

    Row ``i`` gets exactly what :func:`ablation_hooks` of ``head_sets[i]`` gives it alone: the
    modes act per row (``paper_renorm`` rescales per position), except ``paper_renorm_global``,
    whose one factor over the whole batch would mix the settings (a ``ValueError``; generate its
    settings one at a time). The batch size of every forward pass must equal ``len(head_sets)``.
    """
    if mode == "paper_renorm_global":
        raise ValueError(
            "mode='paper_renorm_global' rescales the whole batch with one factor, so rows of different "
            "settings cannot share a batch; use ablation_hooks per setting, or mode='paper_renorm'"
        )
    if not head_sets:
        raise ValueError("head_sets is empty; pass one head set (possibly empty) per batch row")
    return _mask_hooks(model, head_mask(model, head_sets), mode, means, positions)


def _mask_hooks(
    model: HookedTransformer,
    mask: Bool[Tensor, "rows n_layers n_heads"],
    mode: Validated[AblationMode],
    means: Any,
    positions: Any,
) -> list[tuple[str, Callable]]:
    """The hooks of a head mask (one row for every batch row, or one row broadcast to all)."""
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {_MODES}")
    positions = _check_positions(positions)
    mean_t = _means_tensor(model, means) if mode == "mean" else None
    restricted = positions is not None and not (isinstance(positions, str) and positions == "all")
    hooks: list[tuple[str, Callable]] = []
    for lay in sorted(int(v) for v in torch.nonzero(mask.any(dim=(0, 2))).flatten().tolist()):
        state = {"offset": 0}
        if restricted:

            def offset_hook(scores: Tensor, hook: Any, _s: dict = state) -> None:
                _s["offset"] = int(scores.shape[-1] - scores.shape[-2])

            hooks.append((f"blocks.{lay}.attn.hook_attn_scores", offset_hook))
        layer_means = None if mean_t is None else mean_t[lay]
        hooks.append(
            (f"blocks.{lay}.attn.hook_z", _make_z_hook(mask[:, lay], mode, layer_means, positions, state))
        )
    return hooks


def _make_z_hook(
    rows: Bool[Tensor, "rows n_heads"],
    mode: AblationMode,
    layer_means: Tensor | None,
    positions: Any,
    state: dict,
) -> Callable:
    """The ``hook_z`` function of one layer: ``rows[b, h]`` says whether head ``h`` of batch row
    ``b`` is ablated (a single row applies to every batch row)."""
    single = rows.shape[0] == 1

    def hook(z: Float[Tensor, "batch pos n_heads d_head"], hook: Any) -> Tensor:
        B, Q = z.shape[0], z.shape[1]
        if not single and rows.shape[0] != B:
            raise ValueError(
                f"row_ablation_hooks got {rows.shape[0]} head sets but the forward pass has batch size {B}; "
                "build the hooks for this batch's rows"
            )
        sel = _position_mask(positions, B, Q, state["offset"], z.device)
        m = rows.to(z.device)[:, None, :, None]  # [rows, 1, n_heads, 1]
        if sel is not None:
            m = m & sel[:, :, None, None]  # [batch, q, n_heads, 1]
        if mode in ("zero", "mean"):
            if mode == "zero":
                new = torch.zeros((), dtype=z.dtype, device=z.device)
            else:
                # mode "mean" always comes with the layer's means (_mask_hooks)
                new = cast(Tensor, layer_means).to(device=z.device, dtype=z.dtype)  # [n_heads, d_head]
            return torch.where(m, new, z)
        zf = z.float()
        z2 = torch.where(m, torch.zeros((), dtype=zf.dtype, device=z.device), zf)
        if mode == "paper_renorm":
            before = zf.pow(2).sum((-2, -1)).sqrt()
            after = z2.pow(2).sum((-2, -1)).sqrt()
            ratio = torch.where(after > 0, before / after.clamp_min(1e-30), torch.ones_like(after))
            z2 = z2 * ratio[:, :, None, None]
            keep = z2 if sel is None else torch.where(sel[:, :, None, None], z2, zf)
        else:  # paper_renorm_global: one factor over the selected positions of the whole tensor
            w = torch.ones((B, Q), device=z.device) if sel is None else sel.float()
            before = (zf.pow(2).sum((-2, -1)) * w).sum().sqrt()
            after = (z2.pow(2).sum((-2, -1)) * w).sum().sqrt()
            ratio = torch.where(after > 0, before / after.clamp_min(1e-30), torch.ones_like(after))
            z2 = z2 * ratio
            keep = z2 if sel is None else torch.where(sel[:, :, None, None], z2, zf)
        return keep.to(z.dtype)

    return hook


@contextmanager
def ablate_heads(
    model: HookedTransformer,
    heads: Validated[Sequence[tuple[int, int]]],
    mode: AblationMode = "mean",
    means: Any = None,
    positions: Any = None,
) -> Iterator[HookedTransformer]:
    """Context manager: every forward pass (and every generation step) inside the block runs
    with ``heads`` ablated; the hooks are removed on exit, also on error.

    >>> with ablate_heads(model, [(5, 3), (6, 0)], mode="mean", means=means):
    ...     logits = model(tokens)
    """
    hooks: list[tuple[str | Callable, Callable]] = list(ablation_hooks(model, heads, mode, means, positions))
    with model.hooks(fwd_hooks=hooks):
        yield model


# --------------------------------------------------------------------------------------------
# head means
# --------------------------------------------------------------------------------------------


def compute_head_means(
    model: HookedTransformer,
    batch: Any,
    *,
    positions: PositionSpec = "all",
    batch_size: int = 8,
) -> Float[Tensor, "n_layers n_heads d_head"]:
    """Mean of ``z`` per head over a reference set (float32, CPU), padding excluded.

    ``batch``: records or token tensors (:func:`cliff_lens.readout.as_examples`);
    ``positions``: which tokens count, in the :mod:`cliff_lens.readout` grammar (``"all"``
    default; a span name such as ``"thinking"``; ``"last"``; ``"last:<span>"``; ``(start,
    end)``; indices). Every selected token has the same weight."""
    prepared, _ = prepare(model, batch, positions, trim=False, nonempty=True)
    cfg = model.cfg
    sums = torch.zeros((cfg.n_layers, cfg.n_heads, cfg.d_head), dtype=torch.float64)
    count = 0

    def make_reader(b: Batch):
        nonlocal count
        w = b.weights([prepared[i].positions for i in b.index], dtype=torch.float64)
        count += int(w.sum())

        def hook(z: Float[Tensor, "batch pos n_heads d_head"], hook: Any) -> None:
            lay = int(hook.name.split(".")[1])
            sums[lay] += torch.einsum("bphd,bp->hd", z.double(), w.to(z.device)).cpu()

        return hook

    names = [f"blocks.{lay}.attn.hook_z" for lay in range(cfg.n_layers)]
    for _ in run_batches(model, prepared, names, make_reader, batch_size=batch_size):
        pass
    return (sums / count).float()


def save_head_means(
    path: Any, means: Float[Tensor, "n_layers n_heads d_head"], meta: dict | None = None
) -> Path:
    """Save head means as ``<path>.safetensors`` + ``<path>.json`` (metadata); returns the
    safetensors path. ``path`` may end in ``.safetensors`` or have no suffix."""
    from .io import atomic_save_safetensors, atomic_write_json

    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    m = means.means if hasattr(means, "means") else means
    if not isinstance(m, Tensor) or m.ndim != 3:
        raise ValueError(
            f"means must be a [n_layers, n_heads, d_head] tensor, got {getattr(m, 'shape', m)!r}"
        )
    info = {"kind": "head_means", "shape": list(m.shape), **(meta or {})}
    st = base.with_name(base.name + ".safetensors")
    atomic_save_safetensors({"means": m.float()}, st, metadata={"cliff_lens": json.dumps(info)})
    atomic_write_json(base.with_name(base.name + ".json"), info)
    return st


def load_head_means(
    path: Any, model: HookedTransformer | None = None
) -> Float[Tensor, "n_layers n_heads d_head"]:
    """Load means written by :func:`save_head_means`; with ``model`` the shape is checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    st = p if p.suffix == ".safetensors" else p.with_name(p.with_suffix("").name + ".safetensors")
    if not st.exists():
        raise FileNotFoundError(
            f"{st} does not exist; write it with save_head_means(path, compute_head_means(...))"
        )
    try:
        d = load_file(str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{st} is not a readable safetensors file ({e}); recompute the head means") from None
    if "means" not in d:
        raise ValueError(f"{st} has no 'means' tensor; it was not written by save_head_means")
    m = d["means"]
    if model is not None:
        _means_tensor(model, m)
    return m


# --------------------------------------------------------------------------------------------
# weight edits
# --------------------------------------------------------------------------------------------


def ablated_weights(
    model: HookedTransformer,
    heads: Validated[Sequence[tuple[int, int]]],
    mode: Validated[Literal["zero", "mean"]] = "zero",
    means: Any = None,
    *,
    inplace: bool = False,
) -> HookedTransformer:
    """A HookedTransformer whose weights implement zero/mean ablation of ``heads`` at every
    position: ``W_O[l, h] = 0`` and, for ``mean``, ``b_O[l] += means[l, h] @ W_O[l, h]`` (the
    constant the mean head would have written). Exact (same logits as the hooks up to float
    rounding). A deep copy unless ``inplace=True``."""
    if mode not in ("zero", "mean"):
        raise ValueError(
            f"mode={mode!r} cannot be a weight edit (it depends on the activations); use 'zero' or 'mean'"
        )
    hs = validate_heads(model, heads)
    mean_t = _means_tensor(model, means) if mode == "mean" else None
    out = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for lay, h in hs:
            attn = out.blocks[lay].attn
            W = attn.W_O  # [H, d_head, d_model]
            if mean_t is not None:
                add = mean_t[lay, h].to(W.device, torch.float64) @ W[h].double()
                attn.b_O.add_(add.to(attn.b_O.dtype))
            W[h].zero_()
    return out


def _hf_layers(hf_model: Any) -> Any:
    dec = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else getattr(hf_model, "model", hf_model)
    layers = getattr(dec, "layers", None)
    if layers is None:
        raise ValueError(
            f"cannot find decoder layers in {type(hf_model).__name__}; export supports Llama/Qwen/Mistral/Phi-style "
            "models with model.layers[i].self_attn.o_proj"
        )
    return layers


def _o_proj(layer: Any, i: int) -> Any:
    attn = getattr(layer, "self_attn", None)
    o = getattr(attn, "o_proj", None) if attn is not None else None
    if o is None:
        raise ValueError(
            f"layer {i} has no self_attn.o_proj; this architecture is not supported by export_ablated_hf"
        )
    return o


def _enable_o_bias(hf_model: Any) -> bool:
    """Turn on the config flag that gives o_proj a bias (e.g. Llama/Qwen3 ``attention_bias``), adding
    zero biases for every projection the flag creates. Returns False when no such flag exists."""
    cfg = hf_model.config
    for flag in ("attention_bias",):
        if not hasattr(cfg, flag):
            continue
        new_cfg = copy.deepcopy(cfg)
        setattr(new_cfg, flag, True)
        try:
            with torch.device("meta"):
                ref = type(hf_model)(new_cfg)
        except Exception:  # noqa: BLE001 - any failure means "flag not usable"
            return False
        if getattr(_o_proj(_hf_layers(ref)[0], 0), "bias", None) is None:
            return False
        have = dict(hf_model.named_parameters())
        for name, p in ref.named_parameters():
            if name in have:
                continue
            if not name.endswith(".bias"):
                return False
            mod = hf_model.get_submodule(name.rsplit(".", 1)[0])
            w = mod.weight
            mod.bias = torch.nn.Parameter(torch.zeros(p.shape, dtype=w.dtype, device=w.device))
        setattr(cfg, flag, True)
        return True
    return False


def export_ablated_hf(
    hf_model: Any,
    heads: Validated[Sequence[tuple[int, int]]],
    mode: Validated[Literal["zero", "mean"]] = "zero",
    means: Any = None,
    out_dir: Any = None,
    *,
    tokenizer: Any = None,
    copy_model: bool = True,
    overwrite: bool = False,
) -> Any:
    """Write zero/mean ablation of ``heads`` into a Hugging Face model's ``o_proj`` (so ablated
    generation runs in HF ``generate`` or vLLM at full speed); optionally ``save_pretrained``.

    ``zero``: the columns ``h*d_head:(h+1)*d_head`` of ``o_proj.weight`` are zeroed. ``mean``
    (``means`` from :func:`compute_head_means` on the same weights loaded in TransformerLens):
    additionally ``o_proj.bias += o_proj.weight[:, slice] @ means[l, h]``. Llama/Qwen2 ``o_proj``
    has no bias: where the config has a flag that creates one (Llama, Qwen3 ``attention_bias``;
    it also creates q/k/v biases, set to zero) the flag is turned on so the saved model reloads
    exactly; otherwise (e.g. Qwen2) a bias is added in memory only, and ``out_dir`` raises,
    because the saved config could not reload it. Returns the edited model (a copy unless
    ``copy_model=False``); writes ``cliff_lens_ablation.json`` next to the weights.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode={mode!r}: only 'zero' and 'mean' are weight edits")
    cfg = hf_model.config
    L = int(cfg.num_hidden_layers)
    H = int(cfg.num_attention_heads)
    dh = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // H)

    class _Cfg:  # for validate_heads
        n_layers, n_heads = L, H

    hs = validate_heads(_Cfg, heads)
    if mode == "mean":
        if means is None:
            raise ValueError("mode='mean' needs means=compute_head_means(tl_model, reference_batch)")
        m = means.means if hasattr(means, "means") else means
        if tuple(m.shape) != (L, H, dh):
            raise ValueError(f"means has shape {tuple(m.shape)}; this model needs {(L, H, dh)}")
    model = copy.deepcopy(hf_model) if copy_model else hf_model
    layers = _hf_layers(model)
    in_memory_bias = False
    with torch.no_grad():
        if mode == "mean" and getattr(_o_proj(layers[0], 0), "bias", None) is None:
            if not _enable_o_bias(model):
                if out_dir is not None:
                    raise ValueError(
                        f"{type(hf_model).__name__} has no o_proj bias and no config flag to add one, so a saved "
                        "mean-ablated model could not reload the mean term; use mode='zero', hook-based mean "
                        "ablation in TransformerLens, or out_dir=None for an in-memory model"
                    )
                in_memory_bias = True
        for lay, h in hs:
            o = _o_proj(layers[lay], lay)
            sl = slice(h * dh, (h + 1) * dh)
            if mode == "mean":
                add = o.weight[:, sl].double() @ m[lay, h].double().to(o.weight.device)
                if o.bias is None:
                    o.bias = torch.nn.Parameter(
                        torch.zeros(o.weight.shape[0], dtype=o.weight.dtype, device=o.weight.device)
                    )
                o.bias.add_(add.to(o.bias.dtype))
            o.weight[:, sl] = 0
    if in_memory_bias:
        warnings.warn(
            "added o_proj biases in memory only (this architecture's config cannot express them); the model works in "
            "this process but must not be saved",
            stacklevel=2,
        )
    if out_dir is not None:
        _save_hf(model, tokenizer, Path(out_dir), {"heads": [list(h) for h in hs], "mode": mode}, overwrite)
    return model


def _save_hf(model: Any, tokenizer: Any, out: Path, info: dict, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True or another out_dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "cliff_lens_ablation.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# probe scores and per-head causal effects
# --------------------------------------------------------------------------------------------


def positions_mask(
    model: HookedTransformer, batch: Any, positions: PositionSpec
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Left-pad ``batch`` (in input order) and mark ``positions`` (a span name, ``"last"``,
    indices... in the :mod:`cliff_lens.readout` grammar) per example: returns ``(tokens,
    attention_mask, mask)`` with ``mask`` usable as ``positions=`` of :func:`ablation_hooks` for
    that padded batch."""
    prepared, _ = prepare(model, batch, positions, trim=False)
    dev = model_device(model)
    toks, att, offsets = left_pad([p.tokens for p in prepared], pad_token_id(model), dev)
    if att is None:
        att = torch.ones_like(toks)
    b = Batch(list(range(len(prepared))), toks, att, offsets)
    return toks, att, b.position_mask([p.positions for p in prepared])


def _probe_parts(model: HookedTransformer, probe: Any, hook: str | None) -> tuple[Any, Tensor, float]:
    """(hook spec, weight vector, bias) of a probe or a direction."""
    d_model = model.cfg.d_model
    layer = None
    if isinstance(probe, Tensor):
        w, b = probe.detach().float().reshape(-1), 0.0
        name = hook or f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        if w.shape[0] != d_model or float(w.norm()) == 0:
            raise ValueError(
                f"direction has shape {tuple(probe.shape)} but the model's d_model (size) is {d_model}; "
                f"pass a non-zero [{d_model}] vector"
            )
        w = w / w.norm()
    elif hasattr(probe, "direction"):
        w = torch.as_tensor(probe.direction).detach().float() * float(getattr(probe, "scale", 1.0) or 1.0)
        b = float(getattr(probe, "bias", 0.0) or 0.0)
        name = hook or getattr(probe, "hook", None) or "final_norm_weighted"
        layer = getattr(probe, "layer", None)
        if ("{L}" in name or "{l}" in name) and layer is None:
            raise ValueError(
                f"probe hook {name!r} has a {{L}} placeholder but probe.layer is None; pass hook="
            )
        if w.shape[0] != d_model:
            raise ValueError(f"probe direction has size {w.shape[0]} but the model's d_model is {d_model}")
    else:
        raise TypeError(f"probe is a {type(probe).__name__}; pass a RefusalProbe or a [d_model] tensor")
    return resolve_hook(model, name, None if layer is None else int(layer)), w, b


def probe_scores(
    model: HookedTransformer,
    batch: Any,
    probe: Any,
    *,
    positions: PositionSpec = "last:end_of_thinking",
    score: Literal["logit", "probability"] = "logit",
    hook: str | None = None,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
    batch_size: int = 8,
) -> Float[Tensor, "n_examples"]:
    """Probe score of every example (mean over its ``positions``), optionally under extra hooks.

    ``probe``: a ``RefusalProbe`` (its ``hook``: ``"final_norm_weighted"`` = the final norm's
    output, :func:`cliff_lens.readout.final_norm`, or any hook name; logit = ``scale * acts @
    direction + bias``) or a direction tensor (projection of ``blocks[-1].hook_resid_post``, or
    ``hook``, on the unit direction). ``positions``: the :mod:`cliff_lens.readout` grammar
    (default ``"last:end_of_thinking"``, also spelled ``"end_of_thinking_last"``).
    ``fwd_hooks`` must not depend on the batch layout (use :func:`head_causal_effects` for masks)."""
    return _probe_scores(model, batch, probe, positions, score, hook, lambda _b: list(fwd_hooks), batch_size)


def _row_scores(
    model: HookedTransformer,
    probe_parts: tuple[Any, Tensor, float],
    score: str,
    acts: Float[Tensor, "batch pos d_model"],
    wts: Float[Tensor, "batch pos"],
) -> Float[Tensor, " batch"]:
    """Each row's probe score (logit or probability) averaged over its positions (``wts``), on CPU."""
    spec, w, b = probe_parts
    lg = spec.apply(model, acts).float() @ w.to(acts.device) + b  # [B, T]
    val = torch.sigmoid(lg) if score == "probability" else lg
    return (val * wts.to(acts.device)).sum(1).cpu()


def _probe_scores(
    model: HookedTransformer,
    batch: Any,
    probe: Any,
    positions: Any,
    score: str,
    hook: str | None,
    hooks_for: Callable[[Batch], list],
    batch_size: int,
) -> Float[Tensor, "n_examples"]:
    if score not in ("logit", "probability"):
        raise ValueError(f"score={score!r}; use 'logit' or 'probability'")
    spec, w, b = _probe_parts(model, probe, hook)
    prepared, _ = prepare(model, batch, positions, trim=False, nonempty=True)
    out = torch.zeros(len(prepared))

    def make_reader(bt: Batch):
        wts = bt.weights([prepared[i].positions for i in bt.index], mean=True)

        def read(acts: Float[Tensor, "batch pos d_model"], hook: Any) -> None:
            out[bt.index] = _row_scores(model, (spec, w, b), score, acts, wts)

        return read

    for _ in run_batches(model, prepared, [spec.name], make_reader, batch_size=batch_size, hooks=hooks_for):
        pass
    return out


def _per_head_scores(
    model: HookedTransformer,
    batch: Any,
    probe: Any,
    positions: Any,
    score: str,
    hook: str | None,
    heads: list[tuple[int, int]],
    hooks_for: Callable[[Batch, tuple[int, int]], list],
    batch_size: int,
) -> tuple[Float[Tensor, "n_examples"], Float[Tensor, "n_heads n_examples"]]:
    """Baseline probe scores and the scores with each head of ``heads`` ablated alone.

    Ablating a head of layer ``l`` cannot change the residual stream before layer ``l``, so each
    ablated pass starts at ``l`` from the unablated ``blocks.{l}.hook_resid_pre`` (computed once
    per batch, layer after layer) instead of at the embedding: equal to full passes up to float
    rounding, and for heads in late layers several times cheaper."""
    if score not in ("logit", "probability"):
        raise ValueError(f"score={score!r}; use 'logit' or 'probability'")
    if model.cfg.positional_embedding_type == "shortformer":  # its position embedding is not in the residual
        base = _probe_scores(model, batch, probe, positions, score, hook, lambda _b: [], batch_size)
        per = torch.zeros((len(heads), len(base)))
        for k, hd in enumerate(heads):

            def one_head(bt: Batch, hd: tuple[int, int] = hd) -> list:
                return hooks_for(bt, hd)

            per[k] = _probe_scores(model, batch, probe, positions, score, hook, one_head, batch_size) - base
        return base, per
    spec, w, b = _probe_parts(model, probe, hook)
    prepared, _ = prepare(model, batch, positions, trim=False, nonempty=True)
    base, per = torch.zeros(len(prepared)), torch.zeros((len(heads), len(prepared)))
    pid, device = pad_token_id(model), model_device(model)
    with torch.inference_mode(), fast_forward(model):
        for idx in length_buckets([int(p.tokens.numel()) for p in prepared], batch_size):
            bt = Batch(idx, *left_pad([prepared[i].tokens for i in idx], pid, device))
            wts = bt.weights([prepared[i].positions for i in idx], mean=True)
            base[idx], per[:, idx] = _batch_head_scores(model, bt, (spec, w, b), wts, score, heads, hooks_for)
    return base, per - base


def _batch_head_scores(
    model: HookedTransformer,
    bt: Batch,
    probe_parts: tuple[Any, Tensor, float],
    wts: Float[Tensor, "batch pos"],
    score: str,
    heads: list[tuple[int, int]],
    hooks_for: Callable[[Batch, tuple[int, int]], list],
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "n_heads batch"]]:
    """One batch of :func:`_per_head_scores`: its baseline scores and its scores per ablated head."""
    spec = probe_parts[0]
    stop = stop_layer(model, [spec.name])
    got: dict[str, Tensor] = {}

    def read(acts: Float[Tensor, "batch pos d_model"], hook: Any) -> None:
        got["score"] = _row_scores(model, probe_parts, score, acts, wts)

    def scores_from(x: Tensor, start: int | None, extra: list) -> Tensor:
        model.run_with_hooks(
            x, start_at_layer=start, stop_at_layer=stop, attention_mask=bt.attention_mask,
            return_type=None, fwd_hooks=[*extra, (spec.name, read)],
        )  # fmt: skip
        return got["score"]

    by_layer: dict[int, list[int]] = {}
    for k, (lay, _h) in enumerate(heads):
        by_layer.setdefault(lay, []).append(k)
    resid, at = bt.tokens, None  # the residual stream before layer ``at`` (None: the tokens)
    per = torch.zeros((len(heads), len(bt.index)))
    for lay in sorted(by_layer):
        if stop is not None and lay >= stop:  # after the probe's layer: no effect on its score
            break
        resid = model(resid, start_at_layer=at, stop_at_layer=lay, attention_mask=bt.attention_mask)
        at = lay
        for k in by_layer[lay]:
            per[k] = scores_from(resid, lay, hooks_for(bt, heads[k]))
    base = scores_from(resid, at, [])
    for lay in by_layer:
        if stop is not None and lay >= stop:
            per[by_layer[lay]] = base
    return base, per


@dataclass
class CausalEffects:
    """Per-head causal effect on the probe score.

    ``effect[i]`` = mean over examples of (score with head ``heads[i]`` ablated - baseline score):
    positive means removing the head *raises* the refusal score (a suppression head).
    ``contribution = -effect`` has the sign convention of :func:`cliff_lens.heads.head_attributions`
    (negative = the head lowers refusal). ``grid``: ``[n_layers, n_heads]`` effects, NaN where a
    head was not tested."""

    heads: list[tuple[int, int]]
    effect: Float[Tensor, "n_tested"]
    per_example: Float[Tensor, "n_tested n_examples"]
    baseline: Float[Tensor, "n_examples"]
    grid: Float[Tensor, "n_layers n_heads"]
    meta: dict = field(default_factory=dict)

    @property
    def contribution(self) -> Float[Tensor, "n_tested"]:
        """``-effect``: the score the head adds (attribution sign convention)."""
        return -self.effect

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "heads": [list(h) for h in self.heads],
            "effect": self.effect.tolist(),
            "baseline_mean": float(self.baseline.mean()),
            "grid": [[None if v != v else v for v in row] for row in self.grid.tolist()],
            "meta": self.meta,
        }


def head_causal_effects(
    model: HookedTransformer,
    batch: Any,
    probe_or_direction: Any,
    *,
    heads: Validated[Sequence[tuple[int, int]]] | None = None,
    mode: AblationMode = "mean",
    means: Any = None,
    positions: PositionSpec = "last:end_of_thinking",
    ablate_positions: PositionSpec | None = None,
    score: Literal["logit", "probability"] = "logit",
    hook: str | None = None,
    batch_size: int = 8,
) -> CausalEffects:
    """Change of the probe score at ``positions`` when each head alone is ablated.

    One forward pass per head (batched over examples) plus one baseline pass. ``heads``: the
    candidates (default all heads; for big models pass e.g. ``suppression_heads(scores, 10)``).
    ``positions`` / ``ablate_positions``: where the score is read / where the head is ablated
    (``None`` = every position, as in the paper), both in the :mod:`cliff_lens.readout` grammar
    (a span name, ``"last"``, ``"last:<span>"``, indices... per example). The total effect includes every
    downstream path (other heads reading the head, MLPs, self-repair), unlike the direct write."""
    exs = as_examples(batch, model)
    cand = (
        [(i, j) for i in range(model.cfg.n_layers) for j in range(model.cfg.n_heads)]
        if heads is None
        else validate_heads(model, heads)
    )
    if mode == "mean":
        _means_tensor(model, means)
    where = None if ablate_positions is None else prepare(model, exs, ablate_positions, trim=False)[0]

    def hooks_for(bt: Batch, hd: tuple[int, int]) -> list:
        if where is None:
            return ablation_hooks(model, [hd], mode, means)
        return ablation_hooks(
            model, [hd], mode, means, bt.position_mask([where[i].positions for i in bt.index])
        )

    base, per = _per_head_scores(
        model, exs, probe_or_direction, positions, score, hook, cand, hooks_for, batch_size
    )
    grid = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    eff = per.mean(1)
    for (lay, h), e in zip(cand, eff, strict=True):
        grid[lay, h] = e
    meta = {
        "mode": mode,
        "score": score,
        "positions": str(positions),
        "ablate_positions": str(ablate_positions),
    }
    return CausalEffects(list(cand), eff, per, base, grid, meta)


def attribution_vs_causal(attr: Float[Tensor, "n_layers n_heads"], causal: CausalEffects | Tensor) -> dict:
    """Rank agreement of direct attribution with causal effect over the tested heads.

    Compares ``attr[l, h]`` with the causal *contribution* (``-effect``: same sign convention), so
    ``spearman`` near +1 means the direct write explains the total effect; low values point to
    indirect paths or self-repair. ``causal`` may be a ``[n_layers, n_heads]`` grid of effects
    (NaN = untested). Returns ``{"spearman", "pearson", "n"}``."""
    from scipy.stats import pearsonr, spearmanr

    grid = causal.grid if isinstance(causal, CausalEffects) else causal
    if not isinstance(attr, Tensor) or attr.shape != grid.shape:
        raise ValueError(
            f"attr has shape {tuple(getattr(attr, 'shape', ()))} but the causal grid has {tuple(grid.shape)}; "
            "pass head_attributions(...) of the same model"
        )
    ok = ~torch.isnan(grid)
    a = attr.detach().float().cpu()[ok].numpy()
    c = (-grid.float().cpu())[ok].numpy()
    if a.size < 3:
        raise ValueError(f"only {a.size} heads tested; need at least 3 for a rank correlation")
    return {
        "spearman": float(spearmanr(a, c).statistic),
        "pearson": float(pearsonr(a, c).statistic),
        "n": int(a.size),
    }
