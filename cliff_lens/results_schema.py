"""The schema of ``DIR/results.json``, the one-file summary of a ``cliff-lens run``.

:data:`SECTIONS` declares every top-level key once (its JSON Schema, the stage and files it is
built from, whether a complete file needs it); :data:`RESULTS_SCHEMA` (a JSON Schema, draft
2020-12) and the pipeline's assembler (:func:`assemble_results`) both derive from it;
:func:`validate_results` checks an object against it with a small built-in validator (the
subset of JSON Schema the schema uses: ``type``, ``required``, ``properties``,
``additionalProperties``, ``items``, ``pattern``, ``minimum``/``maximum``, ``enum``,
``minItems``), so validation works without the ``jsonschema`` package. Field meanings are
documented in ``docs/results_schema.md``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_SCHEMA",
    "SCHEMA_VERSION",
    "SETTING_PATTERN",
    "SECTIONS",
    "Section",
    "assemble_results",
    "ResultsSchemaError",
    "validate_results",
    "load_results",
]

SCHEMA_VERSION = 2
#: ablation setting names: ``baseline``, ``top-3%``, ``top-3% contrast`` (another ranking),
#: ``random-3% seed 0``
SETTING_PATTERN = (
    r"^(baseline|top-[0-9]+(\.[0-9]+)?%( [a-z_]+)?( in-sample)?"
    r"|random-[0-9]+(\.[0-9]+)?%( layer-matched)? seed -?[0-9]+)$"
)

_num = {"type": "number"}
_rate = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_opt_num = {"type": ["number", "null"]}
_count = {"type": "integer", "minimum": 0}
#: a 95% interval ``[low, high]`` (``null`` ends when n is too small)
_ci = {"type": ["array", "null"], "minItems": 2, "items": {"type": ["number", "null"]}}

_split = {
    "type": "object",
    "required": ["plateau_mean", "final_mean", "cliff_mean", "n_rollouts"],
    "properties": {
        "plateau_mean": _opt_num,
        "plateau_ci95": _ci,
        "final_mean": _opt_num,
        "final_ci95": _ci,
        "cliff_mean": _opt_num,
        "cliff_ci95": _ci,
        "cliff_share": _rate,
        "cliff_share_ci95": _ci,
        "n_rollouts": _count,
    },
}

_row = {
    "type": "object",
    "required": ["setting", "asr", "refusal_score_end", "over_refusal"],
    "properties": {
        "setting": {"type": "string", "pattern": SETTING_PATTERN},
        "asr": _rate,
        "asr_ci95": _ci,
        "over_refusal_ci95": _ci,
        "vs_baseline": {"type": ["object", "null"]},
        "vs_random": {"type": ["object", "null"]},
        "vs_random_matched": {"type": ["object", "null"]},
        "kind": {"type": ["string", "null"]},
        "selection": {"type": "string", "enum": ["held_out", "in_sample"]},
        "ranking": {"type": "string"},
        "matches": {"type": ["string", "null"]},
        "capability": {
            "type": "object",
            "required": ["kl", "answer_logprob_delta", "n_rollouts"],
            "properties": {"n_rollouts": _count, "n_tokens": _count},
        },
        "refusal_score_end": _opt_num,
        "over_refusal": _rate,
        "n_heads": _count,
        "seed": {"type": ["integer", "null"]},
    },
}
_strings = {"type": "array", "items": {"type": "string"}}
#: one claim's disjointness check: which requests overlap (``disjoint`` null: not recorded)
_check_row = {
    "type": "object",
    "required": ["claim", "held_out", "disjoint", "overlap"],
    "properties": {
        "claim": {"type": "string"},
        "setting": {"type": "string"},
        "held_out": {"type": "boolean"},
        "disjoint": {"type": ["boolean", "null"]},
        "overlap": _strings,
        "basis": {"type": "string"},
    },
}
#: the complied or refused rollouts of one prompt set: mean cliff, bootstrap interval or none
_set_group = {
    "type": "object",
    "required": ["n", "cliff_mean", "cliff_ci95"],
    "properties": {"n": _count, "cliff_mean": _opt_num, "cliff_ci95": _ci, "interval": {"type": "string"}},
}
_set_selection = {
    "type": "object",
    "required": ["n_pool", "complied_in_pool", "n_selected", "complied_in_selection", "precision_complied"],
    "properties": {
        "n_pool": _count,
        "complied_in_pool": _count,
        "base_rate_complied": _rate,
        "n_selected": _count,
        "complied_in_selection": _count,
        "precision_complied": _rate,
        "precision_complied_ci95": _ci,
    },
}
_head = {
    "type": "object",
    "required": ["layer", "head", "score"],
    "properties": {
        "layer": {"type": "integer", "minimum": 0},
        "head": {"type": "integer", "minimum": 0},
        "score": _num,
    },
}


@dataclass(frozen=True)
class Section:
    """One top-level key of ``results.json``, declared once.

    ``key``: the key; ``schema``: its JSON Schema; ``stage``: the pipeline stage it reports
    (``None``: the run itself, always written); ``files``: the run-directory files it is built
    from (the pipeline writes the section exactly when they all exist); ``required``: a complete
    ``results.json`` must have it (for a stage section: not ``null`` either, unless
    ``partial=True``). :data:`RESULTS_SCHEMA` and the pipeline's assembler
    (``cliff_lens.pipeline.write_results``) both derive from :data:`SECTIONS`.
    """

    key: str
    schema: dict[str, Any]
    stage: str | None = None
    files: tuple[str, ...] = ()
    required: bool = False


#: every top-level key of ``results.json``, in the order the pipeline writes them
SECTIONS: tuple[Section, ...] = (
    Section("format", {"type": "string", "enum": ["cliff_lens.results"]}),
    Section("version", {"type": "integer", "minimum": 1}),
    Section("schema_version", {"type": "integer", "minimum": 1}),
    Section("run_dir", {"type": "string"}),
    Section(
        "model",
        {
            "type": "object",
            "required": ["source", "n_layers", "n_heads"],
            "properties": {
                "source": {"type": "string"},
                "n_layers": {"type": "integer", "minimum": 1},
                "n_heads": {"type": "integer", "minimum": 1},
                "d_model": {"type": "integer", "minimum": 1},
                "template": {"type": "string"},
            },
        },
        required=True,
    ),
    Section(
        "data",
        {
            "type": "object",
            "properties": {
                "n_rollouts": _count,
                "n_harmful": _count,
                "n_harmless": _count,
                "harmful_refusal_rate": _rate,
                "harmful_refusal_rate_ci95": _ci,
                "harmless_refusal_rate": _rate,
                "harmless_refusal_rate_ci95": _ci,
                "unclosed_thinking": _count,
            },
        },
    ),
    Section(
        "probe",
        {
            "type": ["object", "null"],
            "required": ["hook", "layer", "val_accuracy", "val_auroc", "n_train"],
            "properties": {
                "hook": {"type": "string"},
                "layer": {"type": "integer", "minimum": -1},
                "val_accuracy": _rate,
                "val_accuracy_ci95": _ci,
                "val_auroc": _rate,
                "val_auroc_ci95": _ci,
                "n_train": _count,
                "n_val": _count,
            },
        },
        "probe",
        ("probe.json",),
        True,
    ),
    Section(
        "cliff",
        {
            "type": ["object", "null"],
            "required": ["harmful", "harmless"],
            "properties": {
                "harmful": _split,
                "harmless": _split,
                "scored_by": {"type": "string"},
                "cliff_threshold": _num,
                "by_prompt_set": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["n_rollouts", "complied", "refused"],
                        "properties": {
                            "n_rollouts": _count,
                            "complied": _set_group,
                            "refused": _set_group,
                            "complied_minus_refused": _opt_num,
                        },
                    },
                },
            },
            "additionalProperties": _split,
        },
        "trajectories",
        ("cliff.jsonl",),
        True,
    ),
    Section(
        "heads",
        {
            "type": ["object", "null"],
            "required": ["variant", "top", "n_heads_total"],
            "properties": {
                "variant": {"type": "string"},
                "top": {"type": "array", "items": _head},
                "n_heads_total": {"type": "integer", "minimum": 1},
                "top_percent": {"type": "number", "minimum": 0, "maximum": 100},
                "top_contrast": {"type": "array", "items": {"type": "object"}},
                "stability": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "n_boot": {"type": ["integer", "null"], "minimum": 0},
                            "skipped": {"type": "string"},
                            "heads": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["layer", "head", "frequency"],
                                    "properties": {"frequency": _rate},
                                },
                            },
                        },
                    },
                },
                "held_out": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["fold", "heads", "n_ranked_on", "n_measured_on"],
                                "properties": {
                                    "fold": _count,
                                    "heads": {"type": "array"},
                                    "n_ranked_on": _count,
                                    "n_measured_on": _count,
                                },
                            },
                        },
                    },
                },
                "n_requests": _count,
            },
        },
        "heads",
        ("heads.json",),
        True,
    ),
    Section("ablation", {"type": ["array", "null"], "items": _row}, "ablation", ("ablation.json",), True),
    Section(
        "ablation_random_summary",
        {"type": ["array", "null"], "items": {"type": "object"}},
        "ablation",
        ("ablation.json",),
    ),
    Section(
        "design",
        {
            "type": ["object", "null"],
            "required": [
                "asr_requests",
                "over_refusal_requests",
                "head_means_requests",
                "checks",
                "disjoint",
            ],
            "properties": {
                "selection": {"type": ["string", "null"]},
                "asr_requests": _strings,
                "over_refusal_requests": _strings,
                "head_means_requests": {"type": ["array", "null"], "items": {"type": "string"}},
                "ranking_requests": _strings,
                "settings": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["setting", "ranking", "folds"],
                        "properties": {
                            "setting": {"type": "string", "pattern": SETTING_PATTERN},
                            "folds": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["fold", "ranked_on", "asr_requests", "overlap", "disjoint"],
                                    "properties": {"disjoint": {"type": "boolean"}, "overlap": _strings},
                                },
                            },
                        },
                    },
                },
                "checks": {"type": "array", "items": _check_row},
                "disjoint": {"type": "boolean"},
            },
        },
        "ablation",
        ("ablation.json", "heads.json"),
    ),
    Section(
        "holm",
        {
            "type": ["object", "null"],
            "required": ["alpha", "findings"],
            "properties": {
                "alpha": _rate,
                "method": {"type": "string"},
                "findings": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["finding", "p", "p_holm", "significant", "significant_holm"],
                        "properties": {
                            "finding": {"type": "string"},
                            "p": _rate,
                            "p_holm": _rate,
                            "significant": {"type": "boolean"},
                            "significant_holm": {"type": "boolean"},
                        },
                    },
                },
            },
        },
        "ablation",
        ("ablation.json",),
    ),
    Section(
        "selection",
        {
            "type": ["object", "null"],
            "required": ["summary"],
            "properties": {
                "summary": {"type": ["object", "string"]},
                "by_prompt_set": {"type": "object", "additionalProperties": _set_selection},
                "stratified_baseline": {
                    "type": "object",
                    "required": ["expected_precision", "p_value", "test"],
                    "properties": {
                        "n_selected": _count,
                        "complied_in_selection": _count,
                        "precision_complied": _rate,
                        "expected_precision": _rate,
                        "p_value": _rate,
                        "significant": {"type": "boolean"},
                        "test": {"type": "string"},
                    },
                },
            },
        },
        "selection",
        ("selection.json",),
        True,
    ),
    Section(
        "timings", {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}}, required=True
    ),
    Section(
        "versions",
        {"type": "object", "required": ["cliff_lens"], "additionalProperties": {"type": ["string", "null"]}},
        required=True,
    ),
    Section("config", {"type": "object"}),
)

#: the stage sections that a complete ``results.json`` must hold (``partial=True``: may be absent or null)
STAGE_SECTIONS = tuple(s.key for s in SECTIONS if s.stage is not None and s.required)

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cliff_lens results.json",
    "type": "object",
    "required": [s.key for s in SECTIONS if s.required],
    "properties": {s.key: s.schema for s in SECTIONS},
}


def assemble_results(sections: dict[str, Any]) -> dict[str, Any]:
    """``results.json`` from its sections: the keys of :data:`SECTIONS`, in their order.

    A key that :data:`SECTIONS` does not declare is refused (``ValueError``), so nothing reaches
    ``results.json`` that the schema does not know."""
    known = {s.key for s in SECTIONS}
    unknown = [k for k in sections if k not in known]
    if unknown:
        raise ValueError(f"results.json sections {unknown} are not declared in results_schema.SECTIONS")
    return {s.key: sections[s.key] for s in SECTIONS if s.key in sections}


class ResultsSchemaError(ValueError):
    """``results.json`` does not match :data:`RESULTS_SCHEMA`; ``.errors`` lists every problem."""

    def __init__(self, errors: list[str], where: str = "results") -> None:
        self.errors = errors
        shown = "\n  ".join(errors[:20]) + (
            f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        )
        super().__init__(
            f"{where} does not match the results schema (docs/results_schema.md):\n  {shown}\n"
            "re-run the stage that writes the named field (or `cliff-lens run` to resume the run)"
        )


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "integer" if isinstance(v, int) else "number" if isinstance(v, float) else type(v).__name__
    )


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {_type_name(value)} {value!r:.60}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match the pattern {schema['pattern']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, sub in value.items():
            if key in props:
                _check(sub, props[key], f"{path}.{key}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(sub, extra, f"{path}.{key}", errors)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: needs at least {schema['minItems']} items, has {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{i}]", errors)


def validate_results(obj: Any, *, partial: bool = False, raise_on_error: bool = True) -> list[str]:
    """Check a parsed ``results.json`` against :data:`RESULTS_SCHEMA`.

    Args:
        obj: the parsed JSON object.
        partial: accept a run in progress: stage sections (``probe``, ``cliff``, ``heads``,
            ``ablation``, ``selection``) may be missing or ``null``. Otherwise every section is
            required and must not be ``null``.
        raise_on_error: raise :class:`ResultsSchemaError` listing every problem (default), or
            return the list of problems (empty when valid).

    Returns:
        The list of problems (``[]`` when the object is valid).
    """
    schema = RESULTS_SCHEMA
    if partial:
        schema = dict(schema, required=[k for k in schema["required"] if k not in STAGE_SECTIONS])
    errors: list[str] = []
    _check(obj, schema, "$", errors)
    if not partial and isinstance(obj, dict):
        errors += [
            f"$.{k}: is null (stage not run); run it or validate with partial=True"
            for k in STAGE_SECTIONS
            if k in obj and obj[k] is None
        ]
    if errors and raise_on_error:
        raise ResultsSchemaError(errors)
    return errors


def load_results(path: str | os.PathLike, *, partial: bool = False) -> dict[str, Any]:
    """Read and validate ``results.json`` (a directory is taken as a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `cliff-lens run ... --out {path.parent}` first")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run `cliff-lens run` to rewrite it") from None
    errors = validate_results(obj, partial=partial, raise_on_error=False)
    if errors:
        raise ResultsSchemaError(errors, where=str(path))
    return obj
