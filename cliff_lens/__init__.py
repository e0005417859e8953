"""cliff_lens: find, explain and repair the refusal cliff of reasoning models with TransformerLens.

The public API, by stage of the analysis::

    model = cliff_lens.load_model("cliff-organism")                 # HookedTransformer + tokenizer
    rollouts = cliff_lens.generate_rollouts(model, prompts)         # thinking / answer split
    rollouts = cliff_lens.label_rollouts(rollouts)                  # keyword judge on the answer
    tok = cliff_lens.get_template("generic").tokenize(model.tokenizer, p, thinking)   # spans
    acts = cliff_lens.extract_activations(model, toks, hook="final_norm_weighted")
    probe = cliff_lens.RefusalProbe.fit(acts, labels)
    trajs = cliff_lens.compute_trajectories(model, toks, probe)     # per-token refusal score
    scores = cliff_lens.head_attributions(model, toks, probe)       # [n_layers, n_heads]
    with cliff_lens.ablate_heads(model, cliff_lens.suppression_heads(scores, 3), mode="mean", means=m): ...

Names are imported lazily, so ``import cliff_lens`` (and ``cliff-lens --help``) stays fast. Less
common names live in their modules (``cliff_lens.heads.rank_heads``, ``cliff_lens.stats``,
``cliff_lens.readout``, ``cliff_lens.repair.repair``, ``cliff_lens.fast_forward.fast_forward``,
``cliff_lens.heldout.stability_of``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module. No name equals a submodule's name: ``cliff_lens.repair`` and
#: ``cliff_lens.fast_forward`` are always the modules, whatever was imported first.
_EXPORTS: dict[str, str] = {
    # models and templates
    "load_model": "models",
    "list_models": "models",
    "get_template": "templates",
    # data, rollouts, judges
    "Prompt": "data",
    "Rollout": "data",
    "load_prompts": "data",
    "read_rollouts": "data",
    "generate_rollouts": "rollout",
    "import_rollouts": "rollout",
    "KeywordJudge": "judges",
    "label_rollouts": "judges",
    "outcome": "judges",
    # probes and trajectories
    "extract_activations": "activations",
    "RefusalProbe": "probe",
    "compute_trajectories": "trajectory",
    "cliff_metrics": "trajectory",
    # heads, ablation, evaluation
    "head_attributions": "heads",
    "contrast_scores": "heads",
    "suppression_heads": "heads",
    "ablate_heads": "ablation",
    "compute_head_means": "ablation",
    "export_ablated_hf": "ablation",
    "attack_success": "evaluate",
    "intervention_cost": "capability",
    # held-out head sets: ranked on some requests, measured on others
    "request_folds": "heldout",
    "cross_fit_head_sets": "heldout",
    "selection_stability": "heldout",
    "layer_matched_heads": "heldout",
    # Cliff-as-a-Judge
    "misalignment_scores": "selection",
    "select": "selection",
    "export_sft": "selection",
    "score_pool": "scoring",
    # end to end
    "RunConfig": "config",
    "run": "pipeline",
    "build_report": "viz.report",
}

__all__ = sorted(_EXPORTS) + ["viz", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "viz":
        return importlib.import_module(".viz", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cliff_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
