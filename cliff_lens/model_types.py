"""Static types of the models cliff_lens works on.

cliff_lens runs on a plain :class:`transformer_lens.HookedTransformer`; functions that take a
model annotate it as one (imported under ``TYPE_CHECKING``, so importing cliff_lens does not
import TransformerLens). :func:`cliff_lens.load_model` sets two more attributes on the model it
returns, which :class:`CliffModel` names:

* ``tokenizer``: the Hugging Face tokenizer (TL types it ``Optional``; a loaded model has one);
* ``cliff_template``: the name of the model's reasoning template (:mod:`cliff_lens.templates`).

``nn.Module`` types unknown attributes as ``Tensor | Module``, so code that sets or reads
``cliff_template`` goes through ``cast(CliffModel, model)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["CliffModel"]


class CliffModel(Protocol):
    """What cliff_lens adds to a ``HookedTransformer`` (:func:`cliff_lens.load_model`)."""

    tokenizer: PreTrainedTokenizerBase
    cliff_template: str
