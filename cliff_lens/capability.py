"""The capability cost of an intervention: how much it changes what the model says on harmless text.

Over-refusal counts only refusals. :func:`intervention_cost` measures the change itself, as
refusal_direction and heretic report for their edits: on the model's own unablated rollouts
(teacher-forced, so both runs see the same tokens), at every position that predicts an answer
token,

- ``kl``: ``KL(p_base || p_intervened)`` of the next-token distributions (nats per token);
- ``answer_logprob_delta``: the change of the log-probability of the answer token actually
  written (intervened minus base; negative: the answer became less likely).

Each is averaged over a rollout's answer tokens, then over rollouts, with a 95% bootstrap
interval over rollouts (:func:`cliff_lens.stats.bootstrap_mean`). Reads go through the read-out
engine (:mod:`cliff_lens.readout`): one forward per batch with and one without the hooks, the
residual after the last block taken at the answer positions only, then the model's final norm,
unembedding and, where the config sets ``output_logits_soft_cap > 0`` (Gemma 2), the final-logit
soft-cap ``cap * tanh(logits / cap)`` on those rows, as ``HookedTransformer.forward`` applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from .readout import Batch, final_norm, prepare, run_batches
from .stats import MeanCI, bootstrap_mean

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["InterventionCost", "intervention_cost"]


@dataclass(frozen=True)
class InterventionCost:
    """Per-rollout means and their averages with 95% intervals (see the module docstring)."""

    kl: MeanCI
    answer_logprob_delta: MeanCI
    kl_per_rollout: list[float]
    delta_per_rollout: list[float]
    n_tokens: int

    def to_dict(self) -> dict:
        """JSON-ready: ``{"kl": {"value", "n", "ci95"}, "answer_logprob_delta": {...}, "n_tokens"}``."""
        return {
            "kl": self.kl.to_dict(),
            "answer_logprob_delta": self.answer_logprob_delta.to_dict(),
            "n_rollouts": self.kl.n,
            "n_tokens": self.n_tokens,
            "unit": "nats per answer token, averaged per rollout then over rollouts",
        }


def _soft_cap(model: HookedTransformer, logits: Float[Tensor, "*rows vocab"]) -> Float[Tensor, "*rows vocab"]:
    """``cap * tanh(logits / cap)`` when ``model.cfg.output_logits_soft_cap > 0``, else ``logits``:
    the post-processing ``HookedTransformer.forward`` applies after ``unembed``."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is None or float(cap) <= 0:
        return logits
    return float(cap) * torch.tanh(logits / float(cap))


def _answer_logprobs(
    model: HookedTransformer,
    prepared: list,
    hooks: Callable[[Batch], Sequence[tuple[str | Callable, Callable]]] | None,
    batch_size: int,
) -> dict[int, Float[Tensor, "k vocab"]]:
    """Log-softmax of the next-token logits at each example's positions (one hooked pass)."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    out: dict[int, Tensor] = {}
    store: dict[str, Tensor] = {}

    def make_reader(batch: Batch) -> Callable:
        rows, cols, counts = batch.gather_index([prepared[i].positions for i in batch.index])

        def reader(x: Tensor, hook: Any) -> None:
            store["x"] = x[rows, cols]  # [batch, kmax, d_model]
            store["counts"] = counts

        return reader

    for batch in run_batches(
        model, prepared, [last], make_reader, batch_size=batch_size, hooks=hooks, stop_at_layer=None
    ):
        resid, counts = store["x"], store["counts"]
        logits = _soft_cap(model, model.unembed(final_norm(model, resid)).float())
        logp = torch.log_softmax(logits, dim=-1)
        for j, i in enumerate(batch.index):
            out[i] = logp[j, : int(counts[j])].cpu()
    return out


def intervention_cost(
    model: HookedTransformer,
    rollouts: Sequence[Any],
    hooks: Sequence[tuple[str | Callable, Callable]]
    | Callable[[Batch], Sequence[tuple[str | Callable, Callable]]],
    *,
    batch_size: int = 8,
    seed: int = 0,
) -> InterventionCost:
    """KL and answer log-likelihood change caused by ``hooks`` on ``rollouts``' answers.

    Args:
        model: a ``HookedTransformer``.
        rollouts: ``TokenizedRollout`` records of the model's own UNablated rollouts (prompt,
            thinking and answer tokenized with spans); the answer span is teacher-forced.
            Rollouts with an empty answer are skipped.
        hooks: TL forward hooks of the intervention (e.g. :func:`cliff_lens.ablation.ablation_hooks`),
            or a function of the :class:`~cliff_lens.readout.Batch` returning them.
        batch_size: rollouts per forward pass.
        seed: seed of the bootstrap intervals.

    Returns:
        An :class:`InterventionCost`.
    """
    keep = [r for r in rollouts if (r.spans or {}).get("answer", (0, 0))[1] > r.spans["answer"][0]]
    if not keep:
        raise ValueError(
            "intervention_cost needs rollouts with a non-empty answer span; tokenize the model's own "
            "harmless rollouts with their answers (template.tokenize(tok, prompt, thinking, answer))"
        )
    # the logits at position i predict token i + 1: read from one before the answer to one before its end
    ranges = [(r.spans["answer"][0] - 1, r.spans["answer"][1] - 1) for r in keep]
    prepared = []
    for r, (s, e) in zip(keep, ranges):
        one, _ = prepare(model, [r], (s, e), what="rollout")
        prepared.extend(one)
    hook_fn = hooks if callable(hooks) else (lambda batch: list(hooks))
    base = _answer_logprobs(model, prepared, None, batch_size)
    abl = _answer_logprobs(model, prepared, hook_fn, batch_size)
    kls, deltas, n_tok = [], [], 0
    for i, p in enumerate(prepared):
        lb, la = base[i], abl[i]
        kl = (lb.exp() * (lb - la)).sum(-1)  # KL(base || ablated) per position
        target = p.example.tokens[p.positions + p.cut + 1]  # the answer tokens actually written
        delta = la.gather(-1, target[:, None]).squeeze(-1) - lb.gather(-1, target[:, None]).squeeze(-1)
        kls.append(float(kl.mean()))
        deltas.append(float(delta.mean()))
        n_tok += int(kl.numel())
    return InterventionCost(
        kl=bootstrap_mean(kls, seed=seed),
        answer_logprob_delta=bootstrap_mean(deltas, seed=seed),
        kl_per_rollout=kls,
        delta_per_rollout=deltas,
        n_tokens=n_tok,
    )
