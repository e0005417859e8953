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

Names are imported lazily, so ``import cliff_lens`` (and ``cliff-lens --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models and templates
    "load_model": "models",
    "load_hf": "models",
    "list_models": "models",
    "ModelLoadError": "models",
    "get_template": "templates",
    "register_template": "templates",
    "list_templates": "templates",
    "ReasoningTemplate": "templates",
    "TokenizedRollout": "templates",
    "TemplateError": "templates",
    # data, rollouts, judges
    "Rollout": "data",
    "Prompt": "data",
    "load_prompts": "data",
    "read_rollouts": "data",
    "write_rollouts": "data",
    "generate_rollouts": "rollout",
    "import_rollouts": "rollout",
    "KeywordJudge": "judges",
    "ClassifierJudge": "judges",
    "Judgement": "judges",
    "label_rollouts": "judges",
    # probes and trajectories
    "extract_activations": "activations",
    "fast_forward": "fast_forward",
    "RefusalProbe": "probe",
    "Trajectory": "trajectory",
    "compute_trajectories": "trajectory",
    "dataset_curve": "trajectory",
    "layer_position_map": "trajectory",
    "cliff_metrics": "trajectory",
    "CliffMetrics": "trajectory",
    # heads, ablation, evaluation
    "head_attributions": "heads",
    "direct_attribution_decomposition": "heads",
    "suppression_heads": "heads",
    "promoting_heads": "heads",
    "rank_heads": "heads",
    "HeadRanking": "heads",
    "ablate_heads": "ablation",
    "ablation_hooks": "ablation",
    "compute_head_means": "ablation",
    "ablated_weights": "ablation",
    "export_ablated_hf": "ablation",
    "head_causal_effects": "ablation",
    "attribution_vs_causal": "ablation",
    "attack_success": "evaluate",
    # Cliff-as-a-Judge
    "misalignment_scores": "selection",
    "select": "selection",
    "export_sft": "selection",
    "score_pool": "scoring",
    "merge_scores": "scoring",
    "repair": "repair",
    "evaluate_safety": "repair",
    # report
    "build_report": "viz.report",
    "validate_results": "results_schema",
    "load_results": "results_schema",
    # end to end
    "RunConfig": "pipeline",
    "run": "pipeline",
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
