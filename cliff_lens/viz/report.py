"""``build_report(run_dir)``: one self-contained, offline ``report.html`` for a run directory.

The page inlines the circuitsvis bundle once (in ``<head>``) and every circuitsvis view calls
``CircuitsVis.render`` on its own ``<div>``; charts are inline SVG; CSS is inline; nothing is
fetched (a Content-Security-Policy with ``default-src 'none'`` and a per-report script nonce
enforces it, so even a ``<script>`` that slipped into the page would not run). All user text
(prompts, thinking, answers, token strings, ids, file contents) is HTML-escaped, and data
passed to JavaScript is JSON with ``<``, ``>``, ``&`` escaped.

Each section reads its stage files (see ``docs/results_schema.md``); a missing file makes that
section say "not run" and a corrupt one shows the error, instead of failing the whole report.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from cliff_lens.io import atomic_write_text, iter_jsonl
from cliff_lens.stats import ALPHA, significant

from .html import circuitsvis_bundle, esc
from .views import (
    asr_bars,
    finite_number,
    head_heatmap,
    interval_pair,
    layer_position_map,
    parse_setting,
    refusal_tokens,
    suppression_head_attention,
    trajectory_plot,
)

__all__ = [
    "build_report",
    "ReportData",
    "load_run",
    "bootstrap_band",
    "cliff_headline",
    "fmt_ci",
    "fmt_num",
    "fmt_p",
    "verdict_ablation",
    "verdict_class",
    "verdict_cliff",
    "verdict_heads",
    "verdict_over_refusal",
    "verdict_probe",
    "verdict_selection",
    "verdict_vs_random",
]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 60px}
nav{background:#fff;border-bottom:1px solid #ddd;padding:8px 24px;position:sticky;top:0;z-index:2000}
nav a{margin-right:14px;color:#1f4e8c;text-decoration:none;font-size:14px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 18px;margin:16px 0}
h1{font-size:22px}h2{font-size:18px;margin-top:4px}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.not-run{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:6px 10px;border-radius:4px}
.error{color:#a94442;background:#f2dede;border:1px solid #ebccd1;padding:6px 10px;border-radius:4px;white-space:pre-wrap}
.user-text{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;background:#f7f7f7;padding:4px 6px;max-height:220px;overflow:auto}
.cv-title{font-size:13px;font-weight:600;margin-top:10px}
.note{font-size:12px;color:#555}
details summary{cursor:pointer}
.finding{border-left:4px solid #c8d3e0;padding:2px 0 6px 12px;margin:14px 0}
.finding h3{margin:4px 0}
.claim{font-size:13px;color:#444;margin:2px 0}
.headline{font-family:ui-monospace,monospace;font-size:12.5px;margin:4px 0}
.finding ul{font-size:13px;margin:4px 0;padding-left:20px}
p.verdict{margin:4px 0;font-size:14px}
.verdict.v-yes{color:#1e6b2e}.verdict.v-no{color:#a94442}.verdict.v-weak{color:#8a6d3b}.verdict.v-na{color:#777}.verdict.v-info{color:#1f4e8c}
.run-context{font-size:14px}
.at-a-glance td.verdict{font-weight:600}
"""

SECTIONS = [
    ("findings", "Findings"),
    ("model", "Model & data"),
    ("probe", "Probe"),
    ("trajectory", "Trajectory"),
    ("tokens", "Per-rollout tokens"),
    ("layer-position", "Layer x position"),
    ("heads", "Heads"),
    ("attention", "Attention of suppression heads"),
    ("ablation", "Ablation & ASR"),
    ("selection", "Selection"),
    ("run-info", "Timings & versions"),
]


class _NotRun(Exception):
    """A section's inputs are missing; the message says which and how to produce them."""


class ReportData:
    """Lazy, tolerant access to the files of a run directory."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(
                f"run directory {self.dir} does not exist; run `cliff-lens run ... --out {self.dir}` first"
            )
        self._cache: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        """Path of a stage file inside the run directory."""
        return self.dir / name

    def has(self, name: str) -> bool:
        """Whether a stage file exists."""
        return self.path(name).exists()

    def json(self, name: str, *, required_by: str = "") -> Any:
        """Parsed JSON file (``_NotRun`` when missing)."""
        if name not in self._cache:
            p = self.path(name)
            if not p.exists():
                raise _NotRun(f"{name} is missing" + (f" ({required_by})" if required_by else ""))
            try:
                self._cache[name] = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p} is not valid JSON ({e}); re-run the stage that writes it") from None
        return self._cache[name]

    def results(self) -> dict[str, Any]:
        """``results.json`` or ``{}``."""
        try:
            r = self.json("results.json")
        except _NotRun:
            return {}
        return r if isinstance(r, dict) else {}

    def tensors(self, name: str) -> dict[str, np.ndarray]:
        """Tensors of a safetensors file as float numpy arrays (``_NotRun`` when missing)."""
        key = "tensors:" + name
        if key not in self._cache:
            p = self.path(name)
            if not p.exists():
                raise _NotRun(f"{name} is missing")
            from safetensors.numpy import load_file

            try:
                self._cache[key] = {k: v.astype(np.float64) for k, v in load_file(str(p)).items()}
            except Exception as e:  # noqa: BLE001 - report the corrupt file, keep the page
                raise ValueError(
                    f"{p} is not a readable safetensors file ({e}); re-run the stage that writes it"
                ) from None
        return self._cache[key]

    def labels(self) -> dict[str, dict]:
        """``id -> {"harmful", "refused", ...}`` from ``labels.jsonl`` (empty when missing)."""
        if "labels" not in self._cache:
            out: dict[str, dict] = {}
            if self.has("labels.jsonl"):
                for rec in iter_jsonl(self.path("labels.jsonl"), on_error="skip"):
                    if "id" in rec:
                        out[str(rec["id"])] = rec
            self._cache["labels"] = out
        return self._cache["labels"]

    def labelled_rollouts(self) -> Iterator[dict]:
        """Stream ``rollouts.jsonl`` records with ``harmful``/``refused`` from ``labels.jsonl`` merged in."""
        p = self.path("rollouts.jsonl")
        if not p.exists():
            raise _NotRun("rollouts.jsonl is missing (the rollouts stage)")
        labels = self.labels()
        for rec in iter_jsonl(p, on_error="skip"):
            lab = labels.get(str(rec.get("id")))
            if lab:
                rec = {**rec, **{k: lab[k] for k in ("harmful", "refused", "thinking_closed") if k in lab}}
            yield rec

    def rollouts(self, *, keep: int = 4) -> tuple[Counter, list[dict], int]:
        """Stream ``rollouts.jsonl``: counts by (source, harmful, refused), a few examples per
        class (harmful / harmless), and the number of malformed lines skipped."""
        key = f"rollouts:{keep}"
        if key not in self._cache:
            counts: Counter = Counter()
            examples: dict[Any, list[dict]] = {}
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for rec in self.labelled_rollouts():
                    counts[(str(rec.get("source", "")), rec.get("harmful"), rec.get("refused"))] += 1
                    bucket = examples.setdefault(rec.get("harmful"), [])
                    if len(bucket) < keep:
                        bucket.append(rec)
            ex = [r for b in examples.values() for r in b]
            self._cache[key] = (counts, ex, len(caught))
        return self._cache[key]


def load_run(run_dir: str | os.PathLike) -> ReportData:
    """Open a run directory for reading (used by :func:`build_report`)."""
    return ReportData(run_dir)


# --------------------------------------------------------------------------------------------
# small HTML helpers


def _not_run(msg: str) -> str:
    return f'<p class="not-run">not run: {esc(msg)}</p>'


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)[:400]
    s = str(v)
    return s if len(s) <= 300 else s[:300] + " ..."


def _with_intervals(d: dict[str, Any]) -> dict[str, Any]:
    """Merge every ``x_ci95`` / ``x.ci95`` key into its value: ``{"x": "0.62 [0.39, 0.81]"}``
    (``x.value`` when the value is nested as ``{"value", "ci95"}``)."""
    out = dict(d)
    for k in list(d):
        for suffix in ("_ci95", ".ci95"):
            if not k.endswith(suffix):
                continue
            base = k[: -len(suffix)]
            target = base if base in out else base + ".value" if base + ".value" in out else None
            if target is not None and finite_number(out[target]) is not None:
                out[target] = fmt_ci(out[target], d[k], 3)
                out.pop(k, None)
    return out


def _kv_table(d: dict[str, Any], *, skip: tuple[str, ...] = ()) -> str:
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>"
        for k, v in _with_intervals(d).items()
        if k not in skip
    )
    return f"<table>{rows}</table>" if rows else ""


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}." if not isinstance(v, dict) or not v else f"{prefix}{k}."))
        return {k.rstrip("."): v for k, v in out.items()}
    out[prefix] = d
    return out


def _user_text(label: str, text: Any, limit: int = 4000) -> str:
    if text is None:
        return ""
    s = str(text)
    cut = f" (first {limit} of {len(s)} characters)" if len(s) > limit else ""
    return f'<div><b>{esc(label)}</b>{esc(cut)}<div class="user-text">{esc(s[:limit])}</div></div>'


# --------------------------------------------------------------------------------------------
# numbers with intervals, and the verdicts of the findings (pure functions of results.json dicts)


def fmt_num(v: Any, digits: int = 2) -> str:
    """``0.62``; ``n/a`` for a missing or non-finite number."""
    f = finite_number(v)
    return "n/a" if f is None else f"{f:.{digits}f}"


def fmt_ci(v: Any, ci: Any = None, digits: int = 2) -> str:
    """A number with its 95% interval: ``0.62 [0.39, 0.81]``; ``0.62`` without an interval;
    ``not measured`` without a number."""
    if finite_number(v) is None:
        return "not measured"
    lohi = interval_pair(ci)
    return fmt_num(v, digits) + ("" if lohi is None else f" [{lohi[0]:.{digits}f}, {lohi[1]:.{digits}f}]")


def fmt_pct(v: Any) -> str:
    """A percent given as a number: ``25%``, ``2.5%``; ``?%`` when missing."""
    f = finite_number(v)
    return "?%" if f is None else f"{f:g}%"


def fmt_p(p: Any) -> str:
    """A p-value with two significant digits (``0.0039``, ``0.17``, ``<0.0001``); ``n/a``."""
    f = finite_number(p)
    if f is None:
        return "n/a"
    return "<0.0001" if f < 1e-4 else f"{f:.2g}"


def _n(d: Any, *keys: str) -> int | None:
    if not isinstance(d, dict):
        return None
    for k in keys:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _measured(split: Any) -> TypeGuard[dict[str, Any]]:
    """A cliff split with at least one rollout and a mean drop."""
    return (
        isinstance(split, dict)
        and bool(split.get("n_rollouts"))
        and finite_number(split.get("cliff_mean")) is not None
    )


def verdict_cliff(cliff: Any) -> str:
    """The verdict on the refusal cliff from ``results.json["cliff"]``.

    ``"cliff"`` when the harmful-complied rollouts' mean drop (plateau - final) has a 95%
    interval above 0 AND above the harmful-refused rollouts' interval (the two intervals do not
    overlap: a conservative comparison of two independent means); ``"cliff in complied
    rollouts (no refused rollout to compare)"`` when no rollout refused; otherwise ``"not shown
    at this n (...)"`` saying which condition failed; ``"not measured (...)"`` without data.
    """
    if not isinstance(cliff, dict) or not cliff:
        return "not measured (no cliff metrics: the trajectories stage did not run)"
    comp, ref = cliff.get("harmful_complied"), cliff.get("harmful_refused")
    if not isinstance(comp, dict):
        return "not measured (no complied/refused split of the harmful rollouts)"
    if not _measured(comp):
        return "not measured (no harmful rollout complied)"
    n_c = comp["n_rollouts"]
    c_ci = interval_pair(comp.get("cliff_ci95"))
    if c_ci is None:
        return f"not shown at this n (complied n={n_c}: no interval)"
    if c_ci[0] <= 0:
        return f"not shown at this n (the complied drop's 95% CI includes 0; n={n_c})"
    if not _measured(ref):
        return "cliff in complied rollouts (no refused rollout to compare)"
    r_ci = interval_pair(ref.get("cliff_ci95"))
    r_top = r_ci[1] if r_ci is not None else finite_number(ref.get("cliff_mean"))
    assert r_top is not None  # _measured(ref) checked that its cliff_mean is a finite number
    if c_ci[0] <= r_top:
        return (
            f"not shown at this n (the complied drop's 95% CI overlaps the refused drop's; "
            f"n={n_c} complied, {ref['n_rollouts']} refused)"
        )
    return "cliff"


def _cliff_numbers(split: dict) -> str:
    """``0.69 -> 0.28, drop 0.41, 95% CI [0.30, 0.52], n=20``."""
    ci = interval_pair(split.get("cliff_ci95"))
    ci_s = f"95% CI [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "no interval"
    return (
        f"{fmt_num(split.get('plateau_mean'))} -> {fmt_num(split.get('final_mean'))}, "
        f"drop {fmt_num(split.get('cliff_mean'))}, {ci_s}, n={split['n_rollouts']}"
    )


def cliff_headline(cliff: Any) -> str:
    """The one-line finding: ``cliff: complied 0.69 -> 0.28 (drop 0.41, 95% CI [...], n=20);
    refused: no drop (0.70 -> 0.66, ...)``."""
    verdict = verdict_cliff(cliff)
    if not isinstance(cliff, dict) or not _measured(cliff.get("harmful_complied")):
        return verdict
    ref = cliff.get("harmful_refused")
    if not _measured(ref):
        refused = "refused: not measured (no refused rollout)"
    else:
        r_ci = interval_pair(ref.get("cliff_ci95"))
        if r_ci is None:
            what = "drop"
        elif r_ci[1] < 0:
            what = "no drop, the score rises"
        else:
            what = "no drop" if r_ci[0] <= 0 else "drops too"
        refused = f"refused: {what} ({_cliff_numbers(ref)})"
    short = verdict.split(" (")[0]
    comp = _cliff_numbers(cliff["harmful_complied"]).split(", ", 1)
    return f"{short}: complied {comp[0]} ({comp[1]}); {refused}"


def _out_of_fold(probe: dict) -> bool:
    src = str(probe.get("val_source") or "")
    return "out-of-fold" in src or "cross-fit" in src


def verdict_probe(probe: Any) -> str:
    """The verdict on the probe's held-out accuracy from ``results.json["probe"]``:
    ``"better than chance held-out (AUROC 95% CI above 0.5)"``, ``"not shown at this n (...)"``
    or ``"not measured"``. Held-out means out-of-fold when ``val_source`` says so."""
    if not isinstance(probe, dict) or (
        finite_number(probe.get("val_auroc")) is None and finite_number(probe.get("val_accuracy")) is None
    ):
        return "not measured (no held-out probe metrics)"
    where = "out-of-fold" if _out_of_fold(probe) else "held-out"
    auc_ci = interval_pair(probe.get("val_auroc_ci95"))
    if finite_number(probe.get("val_auroc")) is None:
        acc_ci = interval_pair(probe.get("val_accuracy_ci95"))
        if acc_ci and acc_ci[0] > 0.5:
            return f"better than chance {where} (accuracy 95% CI above 0.5; no AUROC)"
        return f"not shown at this n (no AUROC; accuracy {fmt_ci(probe.get('val_accuracy'), acc_ci)})"
    if auc_ci is None:
        return f"not shown at this n ({where} AUROC has no interval)"
    if auc_ci[0] > 0.5:
        return f"better than chance {where} (AUROC 95% CI above 0.5)"
    return f"not shown at this n ({where} AUROC 95% CI includes 0.5)"


def verdict_heads(heads: Any) -> str:
    """Descriptive: how many top suppression heads were found (the ablation tests them)."""
    if not isinstance(heads, dict) or not heads.get("top"):
        return "not measured (no head ranking)"
    k, total = len(heads["top"]), heads.get("n_heads_total")
    of = f" of {total}" if total else ""
    return f"identified {k}{of} heads (descriptive; the ablation (d) tests them)"


def _mcnemar(row: Any, metric: str) -> dict | None:
    vb = row.get("vs_baseline") if isinstance(row, dict) else None
    m = vb.get(metric) if isinstance(vb, dict) else None
    return m if isinstance(m, dict) and finite_number(m.get("p_value")) is not None else None


def _vs_random(row: Any, random_summary: Any) -> tuple[float | None, int | None]:
    """(empirical p of this top-k% row's ASR among random sets, number of random sets).

    The row's own ``vs_random.asr_empirical_p`` first: two top-k% rows of the same k (the paper
    ranking and the contrast ranking) share one ``random_summary``, whose
    ``top_asr_empirical_p`` is that of its ``top_setting`` only; it is used for a row without
    ``vs_random`` when it names this row (or names none)."""
    p = n = None
    vr = row.get("vs_random") if isinstance(row, dict) else None
    if isinstance(vr, dict):
        p = finite_number(vr.get("asr_empirical_p"))
        n = _n(vr, "n_sets")
    if isinstance(random_summary, dict):
        top = random_summary.get("top_setting")
        if p is None and (top is None or (isinstance(row, dict) and top == row.get("setting"))):
            p = finite_number(random_summary.get("top_asr_empirical_p"))
        if n is None:
            seeds = random_summary.get("seeds")
            n = len(seeds) if isinstance(seeds, list) else _n(random_summary, "n_sets")
    return p, n


def verdict_vs_random(row: Any, random_summary: Any = None, *, alpha: float = ALPHA) -> str:
    """Whether the top-k% heads lower ASR more than random sets of k heads (empirical p)."""
    p, n = _vs_random(row, random_summary)
    if p is None:
        return "not measured (no random head sets of this k)"
    sets = f"{n} random set{'' if n == 1 else 's'}" if n else "random sets"
    if significant(p, alpha):
        return f"significant at {alpha:g} (empirical p={fmt_p(p)} vs {sets})"
    floor = (
        f"; {sets} cannot give p below {1 / (n + 1):.2g}" if n and not significant(1 / (n + 1), alpha) else ""
    )
    return f"not significant at {alpha:g} (empirical p={fmt_p(p)} vs {sets}{floor})"


def verdict_ablation(row: Any, random_summary: Any = None, *, alpha: float = ALPHA) -> str:
    """The verdict on "ablating the top-k% heads lowers ASR" for one top-k% ablation row.

    Leads with the paired exact McNemar test against the baseline on the same harmful prompts
    (``row["vs_baseline"]["asr"]``): ``"significant at 0.05 (McNemar p=..., n=...)"`` when
    p <= ``alpha`` (:func:`cliff_lens.stats.significant`) and fewer prompts succeed under the
    ablation than under the baseline, ``"not significant at 0.05 (McNemar p=..., n=...)"``
    otherwise (``"ASR rose: ..."`` when the change goes the other way); then
    ``"; vs random: ..."`` (:func:`verdict_vs_random`, from the row's own
    ``row["vs_random"]["asr_empirical_p"]``, else ``random_summary["top_asr_empirical_p"]`` when
    that summary's ``top_setting`` is this row).
    """
    if not isinstance(row, dict) or finite_number(row.get("asr")) is None:
        return "not measured (no top-k% ablation row)"
    m = _mcnemar(row, "asr")
    n = (m or {}).get("n") or row.get("n_harmful")
    if m is None:
        lead = "not tested (no McNemar test against the baseline: the baseline did not run)"
    else:
        p, a, b = m["p_value"], m.get("baseline_only", 0), m.get("setting_only", 0)
        stats = f"McNemar p={fmt_p(p)}, n={n}"
        if significant(p, alpha) and b > a:
            lead = f"ASR rose: significant at {alpha:g} ({stats})"
        elif significant(p, alpha):
            lead = f"significant at {alpha:g} ({stats})"
        else:
            lead = f"not significant at {alpha:g} ({stats})"
    return f"{lead}; vs random: {verdict_vs_random(row, random_summary, alpha=alpha)}"


def verdict_over_refusal(row: Any, *, alpha: float = ALPHA) -> str:
    """Whether ablating the heads changed refusals of harmless prompts (paired McNemar)."""
    if not isinstance(row, dict) or finite_number(row.get("over_refusal")) is None:
        return "not measured (no harmless prompts in the ablation)"
    m = _mcnemar(row, "over_refusal")
    if m is None:
        return "not tested (no McNemar test against the baseline)"
    p, a, b = m["p_value"], m.get("baseline_only", 0), m.get("setting_only", 0)
    stats = f"McNemar p={fmt_p(p)}, n={m.get('n') or row.get('n_harmless')}"
    if significant(p, alpha):
        return f"over-refusal {'rose' if b > a else 'fell'}: significant at {alpha:g} ({stats})"
    return f"no significant change at {alpha:g} ({stats})"


def verdict_selection(summary: Any) -> str:
    """Cliff-as-a-Judge: is the share of complied rollouts among the selected ones (precision)
    above the pool's base rate? ``"above the base rate (95% CI excludes it)"``, ``"below ..."``,
    ``"not distinguishable from the base rate at this n (n=...)"`` or ``"not measured"``."""
    if not isinstance(summary, dict):
        return "not measured (the selection stage did not run)"
    prec, base = (
        finite_number(summary.get("precision_complied")),
        finite_number(summary.get("base_rate_complied")),
    )
    if base is None and _n(summary, "n_pool"):
        k = _n(summary, "complied_in_pool")
        base = None if k is None else k / summary["n_pool"]
    n = _n(summary, "n_selected")
    if prec is None or not n:
        return "not measured (no selected rollout)"
    if base is None:
        return "not measured (no base rate of complied rollouts in the pool)"
    ci = interval_pair(summary.get("precision_complied_ci95"))
    if ci is None:
        return f"not shown at this n (precision has no interval; n={n})"
    if ci[0] > base:
        return "above the base rate (95% CI excludes it)"
    if ci[1] < base:
        return "below the base rate (95% CI excludes it)"
    return f"not distinguishable from the base rate at this n (n={n})"


def verdict_class(verdict: str) -> str:
    """CSS class of a verdict: ``v-yes`` (claim shown), ``v-no`` (contradicted), ``v-na`` (not
    measured / not tested), ``v-info`` (descriptive), ``v-weak`` (not shown at this n, not
    significant)."""
    v = verdict.lower()
    if v.startswith(("not measured", "not tested")):
        return "v-na"
    if v.startswith(("asr rose", "below the base rate", "over-refusal rose")):
        return "v-no"
    if v.startswith(("cliff", "significant", "better than chance", "above the base rate")):
        return "v-yes"
    if v.startswith("identified"):
        return "v-info"
    return "v-weak"


# --------------------------------------------------------------------------------------------
# sections


_HASH = re.compile(r"^(sha\d*[:-])?[0-9a-fA-F]{16,}$")


def _is_noise(k: str, v: Any) -> bool:
    """Empty fields, hashes / fingerprints and long path lists: not for the top of a table."""
    if v is None or v == "" or v == [] or v == {}:
        return True
    if any(w in k.lower() for w in ("hash", "fingerprint", "sha")):
        return True
    return isinstance(v, str) and bool(_HASH.match(v.strip()))


def _split_noise(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields worth showing, noise for the provenance fold-out)."""
    shown = {k: v for k, v in d.items() if not _is_noise(str(k), v)}
    return shown, {k: v for k, v in d.items() if k not in shown}


def _sec_model(data: ReportData, ctx: dict) -> str:
    res = data.results()
    parts = []
    model = res.get("model") or {}
    if not model and data.has("run.json"):
        model = {k: v for k, v in data.json("run.json").items() if not isinstance(v, (dict, list))}
    model, model_prov = _split_noise(model)
    parts.append(_kv_table(model) if model else _not_run("results.json has no 'model' section"))
    provenance = dict(model_prov)
    if isinstance(res.get("data"), dict):
        shown, prov = _split_noise(res["data"])
        provenance.update(prov)
        parts.append("<h3>Data</h3>" + _kv_table(shown))
    if res.get("run_dir"):
        provenance["run_dir"] = res["run_dir"]
    if provenance:
        parts.append(
            "<details><summary>Provenance (hashes, paths, empty fields)</summary>"
            + _kv_table({k: v if v not in (None, "", [], {}) else "(none)" for k, v in provenance.items()})
            + "</details>"
        )
    try:
        counts, examples, skipped = data.rollouts()
    except _NotRun as e:
        parts.append(_not_run(str(e)))
        return "\n".join(parts)
    rows = [
        {"source": s, "harmful prompt": h, "refused": r, "rollouts": n}
        for (s, h, r), n in sorted(counts.items(), key=lambda kv: str(kv[0]))
    ]
    parts.append(f"<h3>Rollouts ({sum(counts.values())})</h3>")
    parts.append(_table(rows, ["source", "harmful prompt", "refused", "rollouts"]))
    if skipped:
        parts.append(f'<p class="note">{skipped} malformed line(s) of rollouts.jsonl skipped.</p>')
    parts.append("<h3>Examples</h3>")
    for rec in examples:
        prompt = " ".join(str(rec.get("prompt") or "").split())
        label = (
            f"{rec.get('source', '')} · harmful={rec.get('harmful')} · refused={rec.get('refused')} · "
            + (prompt if len(prompt) <= 90 else prompt[:90] + " ...")
        )
        parts.append(
            f"<details><summary>{esc(label)}</summary>"
            + f'<p class="note">id {esc(rec.get("id", "?"))}</p>'
            + _user_text("prompt", rec.get("prompt"))
            + _user_text("thinking", rec.get("thinking"))
            + _user_text("answer", rec.get("answer"))
            + "</details>"
        )
    return "\n".join(parts)


def _sec_probe(data: ReportData, ctx: dict) -> str:
    res = data.results()
    probe = res.get("probe")
    parts = []
    if probe:
        parts.append(_kv_table(_flatten({k: v for k, v in probe.items() if k != "metrics"})))
    if data.has("probe.json"):
        info = data.json("probe.json")
        info = info if isinstance(info, dict) else {}
        metrics = info.get("metrics") or (info.get("meta") or {}).get("metrics")
        if metrics:
            parts.append("<h3>Metrics recorded in probe.json</h3>")
            parts.append(_kv_table(_flatten(metrics)))
    if not parts:
        raise _NotRun("no 'probe' in results.json and no probe.json (the probe stage)")
    return "\n".join(parts)


def _trajectories(data: ReportData) -> tuple[list, dict]:
    """(trajectories, info) from ``trajectories.safetensors`` + ``.json`` (cached)."""
    if "trajs" not in data._cache:
        for name in ("trajectories.safetensors", "trajectories.json"):
            if not data.has(name):
                raise _NotRun(f"{name} is missing (the trajectories stage: `cliff-lens trace`)")
        from cliff_lens.trajectory import load_trajectories

        trajs = load_trajectories(data.path("trajectories"))
        if not trajs:
            raise _NotRun("trajectories.json lists no rollout")
        info = data.json("trajectories.json")
        meta = dict(info.get("meta") or {})
        n = len(trajs)
        harmful = meta.get("harmful")
        groups = meta.get("groups")
        if not isinstance(harmful, list) or len(harmful) != n:
            labels = data.labels()
            harmful = [labels.get(str(tr.id), {}).get("harmful") for tr in trajs]
        if not isinstance(groups, list) or len(groups) != n:
            groups = [None] * n
        layer = meta.get("probe_layer")
        if trajs[0].scores.ndim == 2 and layer is None:
            layer = trajs[0].layers[-1] if trajs[0].layers else None
        eots = Counter(
            tr.spans.get("end_of_thinking", (0, 0))[1] - tr.spans.get("end_of_thinking", (0, 0))[0]
            for tr in trajs
        )
        data._cache["trajs"] = (
            trajs,
            {
                "harmful": harmful,
                "groups": groups,
                "layer": layer if trajs[0].scores.ndim == 2 else None,
                "eot_len": eots.most_common(1)[0][0],
            },
        )
    return data._cache["trajs"]


def bootstrap_band(
    m: Any, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware mean of ``m`` (``[n_rollouts, n_positions]``) over rollouts, with a percentile
    bootstrap interval of that mean at every position (rollouts resampled with replacement,
    ``n_boot`` resamples, fixed ``seed``). Positions with fewer than 2 finite values get a NaN
    interval. Returns ``(mean, low, high)``."""
    import warnings

    m = np.asarray(m, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"bootstrap_band needs a [n_rollouts, n_positions] matrix, got shape {m.shape}")
    n, L = m.shape
    nan = np.full(L, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(m, axis=0) if n else nan.copy()
        if n < 2:
            return mean, nan.copy(), nan.copy()
        # a resample with replacement = multinomial counts of each rollout; the resampled
        # NaN-aware means are then two matrix products (sums and counts of finite values)
        finite = np.isfinite(m)
        w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
        boots = (w @ np.where(finite, m, 0.0)) / (w @ finite.astype(float))
        a = (1 - confidence) / 2
        lo, hi = np.nanquantile(boots, [a, 1 - a], axis=0)
    few = np.isfinite(m).sum(axis=0) < 2
    lo[few], hi[few] = np.nan, np.nan
    return mean, lo, hi


_BAND_NOTE = (
    "shaded: 95% bootstrap interval of the mean (rollouts resampled with replacement, 1000 "
    "resamples, seed 0; none where fewer than 2 rollouts reach a position)"
)


def _curve_plot(trajs: list, sets: dict[str, list[int]], info: dict, length: int, title: str) -> str:
    from cliff_lens.trajectory import tail_aligned

    curves, bands = {}, {}
    for name, idx in sets.items():
        if not idx:
            continue
        m = tail_aligned([trajs[i] for i in idx], layer=info["layer"], length=length).numpy()
        mean, lo, hi = bootstrap_band(m)
        curves[f"{name} (n={len(idx)})"] = mean
        bands[f"{name} (n={len(idx)})"] = (lo, hi)
    if not curves:
        return ""
    return trajectory_plot(curves, eot_len=info["eot_len"], bands=bands, title=title).to_html()


def _group_sets(info: dict, n: int) -> dict[str, list[int]]:
    return {
        g.replace("harmful_", "harmful, "): [i for i in range(n) if info["groups"][i] == g]
        for g in ("harmful_complied", "harmful_refused")
    }


def _cliff_figure(data: ReportData, ctx: dict) -> tuple[str, str]:
    """The complied-vs-refused trajectory plot (harmful vs harmless when there are no groups)."""
    trajs, info = _trajectories(data)
    n = len(trajs)
    length = min(ctx["trajectory_length"], max(tr.scores.shape[-1] for tr in trajs))
    sets = _group_sets(info, n)
    title = "Harmful rollouts, complied vs refused: refusal score up to the end of thinking"
    if not any(sets.values()):
        sets = {
            "harmful": [i for i in range(n) if info["harmful"][i] is True],
            "harmless": [i for i in range(n) if info["harmful"][i] is False],
        }
        title = "Refusal score up to the end of thinking, harmful vs harmless (no complied/refused groups)"
    html = _curve_plot(trajs, sets, info, length, title)
    if not html:
        raise _NotRun("no rollout in trajectories is labelled")
    return html, "Figure: mean curves, tail-aligned at the end of thinking; " + _BAND_NOTE + "."


def _sec_trajectory(data: ReportData, ctx: dict) -> str:
    trajs, info = _trajectories(data)
    n = len(trajs)
    length = min(ctx["trajectory_length"], max(tr.scores.shape[-1] for tr in trajs))
    sets = {
        "harmful": [i for i in range(n) if info["harmful"][i] is True],
        "harmless": [i for i in range(n) if info["harmful"][i] is False],
    }
    parts = [
        _curve_plot(
            trajs,
            sets,
            info,
            length,
            "Mean refusal score, harmful vs harmless, aligned to the end of thinking",
        )
    ]
    groups = _group_sets(info, n)
    if all(groups.values()):
        parts.append(_curve_plot(trajs, groups, info, length, "Harmful rollouts: complied vs refused"))
    if not any(parts):
        raise _NotRun("no rollout in trajectories is labelled harmful or harmless")
    cliff = data.results().get("cliff")
    if isinstance(cliff, dict) and cliff:
        parts.append(_cliff_table(cliff))
    layer = f"layer {info['layer']}" if info["layer"] is not None else "the probe's read-out"
    parts.append(
        f'<p class="note">Scores at {esc(layer)}; curves are tail-aligned (the last point is the last '
        f"end-of-thinking token; the last {esc(length)} positions shown), NaN-aware mean over rollouts "
        f"(a rollout shorter than a position does not count there); {esc(_BAND_NOTE)}. "
        f"End-of-thinking tokens: {esc(info['eot_len'])}.</p>"
    )
    return "\n".join(p for p in parts if p)


def _cliff_table(cliff: dict) -> str:
    """Per-split cliff metrics, each mean with its 95% interval."""
    rows = []
    for k, v in cliff.items():
        if not isinstance(v, dict) or k == "by_prompt_set":
            continue
        rows.append(
            {
                "split": k,
                "n": v.get("n_rollouts"),
                "plateau": fmt_ci(v.get("plateau_mean"), v.get("plateau_ci95")),
                "final": fmt_ci(v.get("final_mean"), v.get("final_ci95")),
                "drop (plateau - final)": fmt_ci(v.get("cliff_mean"), v.get("cliff_ci95")),
                "share with a cliff": fmt_ci(v.get("cliff_share"), v.get("cliff_share_ci95")),
            }
        )
    extra = [f"{k}: {v}" for k, v in cliff.items() if not isinstance(v, dict)]
    cols = ["split", "n", "plateau", "final", "drop (plateau - final)", "share with a cliff"]
    return (
        _table(rows, cols)
        + (f'<p class="note">{esc("; ".join(extra))}</p>' if extra else "")
        + _cliff_within_sets(cliff.get("by_prompt_set"))
    )


def _ci_or_none(b: dict) -> str:
    """A mean cliff with its interval, or ``no interval (n < 10)`` said outright."""
    if finite_number(b.get("cliff_mean")) is None:
        return "not measured (n=0)"
    if interval_pair(b.get("cliff_ci95")) is None:
        return f"{fmt_num(b.get('cliff_mean'))}, no interval ({b.get('interval', 'n too small')})"
    return fmt_ci(b.get("cliff_mean"), b.get("cliff_ci95"))


def _cliff_within_sets(by_set: Any) -> str:
    """Complied vs refused cliff within each prompt set (framing held fixed)."""
    if not isinstance(by_set, dict) or not by_set:
        return ""
    rows = [
        {
            "prompt set": name,
            "n harmful": b.get("n_rollouts"),
            "complied: drop": _ci_or_none(b.get("complied") or {}),
            "n complied": (b.get("complied") or {}).get("n"),
            "refused: drop": _ci_or_none(b.get("refused") or {}),
            "n refused": (b.get("refused") or {}).get("n"),
            "complied - refused": fmt_num(b.get("complied_minus_refused")),
        }
        for name, b in by_set.items()
        if isinstance(b, dict)
    ]
    return (
        "<h3>Within each prompt set</h3>"
        + _table(rows, list(rows[0]))
        + '<p class="note">A framed set may comply more whatever the cliff; within one set the '
        "complied-vs-refused contrast does not mix framings. Bootstrap 95% interval of the mean; none "
        "below 10 rollouts.</p>"
    )


def _token_strings(ctx: dict, ids: list[int]) -> list[str]:
    tok = ctx.get("tokenizer")
    if tok is None:
        return [f"#{i} " for i in ids]
    return [str(s) for s in tok.batch_decode([[i] for i in ids])]


def _sec_tokens(data: ReportData, ctx: dict) -> str:
    trajs, info = _trajectories(data)
    n = len(trajs)
    order = []
    for g in ("harmful_complied", "harmful_refused", "harmless_helped", "harmless_refused"):
        order += [i for i in range(n) if info["groups"][i] == g][:1]
    for i in range(n):  # without groups: harmful first, then harmless
        if len(order) >= ctx["n_token_examples"]:
            break
        if i not in order and (info["harmful"][i] or len(order) >= 2):
            order.append(i)
    labels = data.labels()
    parts = []
    if ctx.get("tokenizer") is None:
        parts.append(
            '<p class="note">No tokenizer given (build_report(..., model=...)): tokens shown as ids.</p>'
        )
    for i in order[: ctx["n_token_examples"]]:
        tr = trajs[i]
        row = tr.row(info["layer"]) if tr.scores.ndim == 2 else tr.scores
        lab = labels.get(str(tr.id), {})
        title = (
            f"{tr.id} · {info['groups'][i] or ('harmful' if info['harmful'][i] else 'harmless')}"
            + (f" · refused={lab['refused']}" if "refused" in lab else "")
            + f" · final score {_fmt(float(row[-1]))}"
        )
        parts.append(
            refusal_tokens(_token_strings(ctx, tr.tokens.tolist()), row.numpy(), title=title).to_html()
        )
    return "\n".join(parts)


def _sec_layer_position(data: ReportData, ctx: dict) -> str:
    trajs, info = _trajectories(data)
    if trajs[0].scores.ndim != 2 or len(trajs[0].layers or []) < 2:
        raise _NotRun("trajectories hold one layer only (trace several layers for the map)")
    from cliff_lens.trajectory import layer_position_map as lp_map

    harmful = [t for t, h in zip(trajs, info["harmful"]) if h] or trajs
    length = min(ctx["trajectory_length"], max(tr.scores.shape[-1] for tr in harmful))
    m, layers, _ = lp_map(harmful, length=length)
    return layer_position_map(
        m,
        layers=layers,
        eot_len=info["eot_len"],
        title="Mean refusal score of harmful rollouts by layer and position",
    ).to_html()


def _heads_info(data: ReportData) -> dict:
    """Head scores and top heads from ``heads.json`` (HeadRanking format) and/or results.json."""
    info: dict[str, Any] = {}
    res = data.results().get("heads") or {}
    info.update(res)
    try:
        hj = data.json("heads.json")
    except _NotRun:
        hj = None
    if isinstance(hj, dict):
        if hj.get("scores") is not None:
            info["scores"] = hj["scores"]
        if hj.get("suppression_heads"):
            info["top"] = [
                {"layer": int(a), "head": int(b), "score": float(c)} for a, b, c in hj["suppression_heads"]
            ]
        elif hj.get("top"):
            info["top"] = hj["top"]
        if hj.get("contrast_heads") and not info.get("top_contrast"):
            info["top_contrast"] = [
                {"layer": int(a), "head": int(b), "score": float(c)} for a, b, c in hj["contrast_heads"]
            ]
        variant = (hj.get("meta") or {}).get("variant") or hj.get("variant")
        if variant:
            info["variant"] = variant
        if hj.get("top_percent") is not None:
            info["top_percent"] = hj["top_percent"]
        if info.get("scores") is not None and "n_heads_total" not in info:
            info["n_heads_total"] = len(info["scores"]) * len(info["scores"][0])
    return info


def _sec_heads(data: ReportData, ctx: dict) -> str:
    info = _heads_info(data)
    if not info:
        raise _NotRun("no heads.json and no 'heads' in results.json (the heads stage)")
    parts = []
    top = info.get("top") or []
    if info.get("scores") is not None:
        parts.append(head_heatmap(np.asarray(info["scores"], dtype=float), top=top or None).to_html())
    else:
        parts.append(_not_run("heads.json has no 'scores' matrix: heatmap unavailable"))
    parts.append(
        f"<p>variant: <b>{esc(info.get('variant', '?'))}</b> · heads in model: {esc(info.get('n_heads_total', '?'))}"
        f" · top suppression heads (most negative): {len(top)}</p>"
    )
    if top:
        parts.append(_table(top, ["layer", "head", "score"]))
    return "\n".join(parts)


def _pick_attention_rollouts(data: ReportData, n: int) -> list[dict]:
    first: list[dict] = []
    jailbroken: list[dict] = []
    for rec in data.labelled_rollouts():
        if rec.get("harmful") and rec.get("thinking") is not None and rec.get("thinking_closed", True):
            (jailbroken if rec.get("refused") is False else first).append(rec)
            if len(jailbroken) >= n:
                break
    return (jailbroken + first)[:n]


def _sec_attention(data: ReportData, ctx: dict) -> str:
    model = ctx.get("model")
    info = _heads_info(data)
    top = info.get("top") or []
    if not top:
        raise _NotRun("no top suppression heads (heads stage)")
    if model is None:
        raise _NotRun(
            "attention views need the model: build_report(run_dir, model=load_model(...)) or `cliff-lens report DIR`"
        )
    from cliff_lens.templates import get_template

    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise _NotRun("the model has no tokenizer attached; load it with cliff_lens.load_model")
    cfg = data.results().get("config") or {}
    template = get_template(cfg.get("template") or getattr(model, "cliff_template", None), tok)
    recs = _pick_attention_rollouts(data, ctx["n_attention_rollouts"])
    if not recs:
        raise _NotRun("no harmful rollout with closed thinking in rollouts.jsonl")
    heads = top[: ctx["max_attention_heads"]]
    parts = [
        '<p class="note">Queries: the end-of-thinking tokens only (bottom rows of each grid; other rows are 0). '
        f"Keys: the sequence up to the end of thinking (last {ctx['max_keys']} tokens at most). "
        "Hover a thumbnail to zoom a head; the coloured tokens below show each head's mean attention "
        "from the end-of-thinking tokens.</p>"
    ]
    for rec in recs:
        tr = template.tokenize(tok, rec["prompt"], rec["thinking"], rec.get("answer") or "")
        label = f"rollout {rec.get('id', '?')} · refused={rec.get('refused')}"
        parts.append(
            suppression_head_attention(model, tr, heads, max_keys=ctx["max_keys"], title=label).to_html()
        )
    return "\n".join(parts)


def _ablation_rows(data: ReportData) -> list[dict]:
    rows = None
    try:
        aj = data.json("ablation.json")
        rows = aj.get("settings") or aj.get("rows") if isinstance(aj, dict) else aj
    except _NotRun:
        pass
    rows = rows or data.results().get("ablation")
    if not rows:
        raise _NotRun("no ablation.json and no 'ablation' in results.json (the ablation/ASR stage)")
    return [r for r in rows if isinstance(r, dict) and r.get("kind") not in _SUMMARY_KINDS]


#: ablation rows that summarise a null's random sets (not a setting that ran)
_SUMMARY_KINDS = ("random_summary", "random_matched_summary")


def _label(row: dict) -> str:
    """A setting's name with ``(in-sample)`` for a top set ranked on every rollout (the ASR
    prompts' own included), so it is never read as the held-out headline."""
    name = str(row.get("setting", "?"))
    if row.get("selection") == "in_sample" or name.endswith(" in-sample"):
        return name.removesuffix(" in-sample") + " (in-sample)"
    return name


def _sec_ablation(data: ReportData, ctx: dict) -> str:
    rows = _ablation_rows(data)
    view = asr_bars(rows)
    table = []
    for r in rows:
        m_a, m_o = _mcnemar(r, "asr"), _mcnemar(r, "over_refusal")
        p_r, _ = _vs_random(r, None)
        p_m = finite_number((r.get("vs_random_matched") or {}).get("asr_empirical_p"))
        t = {
            "setting": _label(r),
            "ASR": fmt_ci(r.get("asr"), r.get("asr_ci95")),
            "over-refusal": fmt_ci(r.get("over_refusal"), r.get("over_refusal_ci95")),
            "refusal score at end": r.get("refusal_score_end"),
            "McNemar p (ASR)": fmt_p(m_a["p_value"]) if m_a else "",
            "McNemar p (over-refusal)": fmt_p(m_o["p_value"]) if m_o else "",
            "empirical p vs random": fmt_p(p_r) if p_r is not None else "",
            "empirical p vs layer-matched": fmt_p(p_m) if p_m is not None else "",
            "capability cost": _capability_cost(r) or "",
        }
        for k in ("n_heads", "n_harmful", "n_harmless"):
            if k in r:
                t[k] = r[k]
        table.append(t)
    every = list(dict.fromkeys(c for t in table for c in t))
    cols = [c for c in every if c in ("setting", "ASR") or any(t.get(c) not in (None, "") for t in table)]
    parts = [
        view.to_html(),
        '<p class="note">Whiskers: 95% Wilson interval on baseline and top-k% bars (and on a random-k% bar '
        "of a single seed); random-k% bars of several seeds: mean over seeds, whisker min..max, dots the "
        "seeds.</p>",
        _table(table, cols),
    ]
    summaries = _random_summaries(data, data.results(), rows)
    if summaries:
        srows = [
            {
                "random k%": f"{k:g}%",
                "sets": len(s["seeds"]) if isinstance(s.get("seeds"), list) else "",
                "ASR mean": fmt_num(s.get("asr_mean")),
                "ASR min..max": f"{fmt_num(s.get('asr_min'))}..{fmt_num(s.get('asr_max'))}",
                "over-refusal mean": fmt_num(s.get("over_refusal_mean")),
                "top-k% ASR": fmt_num(s.get("top_asr")),
                "empirical p (top-k% vs random)": fmt_p(s.get("top_asr_empirical_p")),
                "KL mean": fmt_num(s.get("kl_mean"), 3)
                if finite_number(s.get("kl_mean")) is not None
                else "",
            }
            for k, s in sorted(summaries.items())
        ]
        scols = [c for c in srows[0] if any(r.get(c) not in (None, "") for r in srows)]
        parts.append("<h3>Random head sets</h3>" + _table(srows, scols))
    res = data.results()
    parts += [
        _held_out_headline(rows),
        _nulls_table(data),
        _holm_table(res.get("holm")),
        _design_block(res.get("design")),
        _stability_table(data, res),
        _audit_table(rows),
    ]
    return "\n".join(p for p in parts if p)


def _typed_ablation(data: ReportData) -> Any:
    """``ablation.json`` as :class:`cliff_lens.evaluate.AblationResults` (``None`` without it)."""
    from cliff_lens.evaluate import AblationResults

    return AblationResults.load(data.path("ablation.json")) if data.has("ablation.json") else None


def _held_out_headline(rows: list[dict]) -> str:
    """The held-out top-k% ASR (the headline: each prompt ablated with heads ranked without its
    request) with the in-sample figure of the same k beside it, labelled."""
    held = [r for r in rows if r.get("kind") == "top" and r.get("selection") == "held_out"]
    if not held:
        return ""
    base = next((r for r in rows if r.get("kind") == "baseline"), {})
    items = []
    for r in held:
        ins = next(
            (
                x
                for x in rows
                if x.get("selection") == "in_sample"
                and x.get("top_percent") == r.get("top_percent")
                and x.get("ranking") == r.get("ranking")
            ),
            None,
        )
        beside = (
            f"; beside it, <b>{esc(_label(ins))}</b> (ranked on every rollout, the ASR prompts' own "
            f"included; not held out): ASR {esc(fmt_ci(ins.get('asr'), ins.get('asr_ci95')))}"
            if ins
            else ""
        )
        items.append(
            f"<li><b>{esc(_label(r))}</b> (held out: prompt j ablated with heads ranked on the other "
            f"folds' requests): ASR {esc(fmt_ci(r.get('asr'), r.get('asr_ci95')))} vs baseline "
            f"{esc(fmt_ci(base.get('asr'), base.get('asr_ci95')))}{beside}</li>"
        )
    return '<h3>Held-out headline</h3><ul class="headline-list">' + "".join(items) + "</ul>"


def _nulls_table(data: ReportData) -> str:
    """Both nulls of each top-k% set side by side: uniform random sets and layer-matched sets."""
    ab = _typed_ablation(data)
    if ab is None:
        return ""
    rows = []
    for s in ab.random_summaries:
        r = s.row
        kind = "layer-matched" if r.get("kind") == "random_matched_summary" else "uniform"
        rows.append(
            {
                "null": kind,
                "sets": len(r.get("seeds") or []),
                "compared with": r.get("top_setting") or r.get("matches") or "",
                "ASR mean": fmt_num(r.get("asr_mean")),
                "ASR min..max": f"{fmt_num(r.get('asr_min'))}..{fmt_num(r.get('asr_max'))}",
                "over-refusal mean": fmt_num(r.get("over_refusal_mean")),
            }
        )
    tops = []
    for s in ab.measured:
        r = s.row
        if r.get("kind") != "top":
            continue
        vr, vm = r.get("vs_random") or {}, r.get("vs_random_matched") or {}
        tops.append(
            {
                "setting": _label(r),
                "ASR": fmt_num(r.get("asr")),
                "empirical p vs uniform": _p_mark(vr.get("asr_empirical_p"), vr.get("n_sets")),
                "empirical p vs layer-matched": _p_mark(vm.get("asr_empirical_p"), vm.get("n_sets")),
            }
        )
    if not rows and not tops:
        return ""
    return (
        "<h3>Both nulls</h3>"
        + (_table(rows, list(rows[0])) if rows else "")
        + (_table(tops, list(tops[0])) if tops else "")
        + '<p class="note">Uniform: k% of all heads at random. Layer-matched: per fold, as many heads '
        "of each layer as the held-out top set has. Empirical p: (1 + #sets with ASR &lt;= the top "
        "set's) / (1 + #sets), each row's own.</p>"
    )


def _p_mark(p: Any, n: Any = None) -> str:
    """``0.05 (significant)`` / ``0.17 (not significant)`` under :func:`cliff_lens.stats.significant`."""
    if finite_number(p) is None:
        return ""
    sets = f", {n} sets" if n else ""
    return f"{fmt_p(p)} ({'significant' if significant(p) else 'not significant'}{sets})"


def _holm_table(holm: Any) -> str:
    """The run's findings with raw and Holm-adjusted p and the decision on each."""
    found = holm.get("findings") if isinstance(holm, dict) else None
    if not found:
        return ""
    alpha = holm.get("alpha", ALPHA)
    rows = [
        {
            "finding": f.get("finding"),
            "p": fmt_p(f.get("p")),
            f"raw p <= {alpha:g}": "yes" if significant(f.get("p"), alpha) else "no",
            "Holm p": fmt_p(f.get("p_holm")),
            f"Holm p <= {alpha:g}": "yes" if significant(f.get("p_holm"), alpha) else "no",
        }
        for f in found
    ]
    return (
        "<h3>Multiple comparisons (Holm)</h3>"
        + _table(rows, list(rows[0]))
        + f'<p class="note">{esc(holm.get("method", "Holm-Bonferroni"))}; a finding is significant when '
        f"its p &lt;= {alpha:g}.</p>"
    )


def _design_block(design: Any) -> str:
    """Which requests chose the heads, which measured them and which gave the head means, and the
    disjointness check of every claim (a failing held-out check is shown as an error)."""
    if not isinstance(design, dict):
        return ""

    def reqs(key: str) -> str:
        v = design.get(key)
        return "not recorded" if v is None else f"{len(v)}: " + ", ".join(map(str, v))

    rows = [
        {"requests": "ASR (harmful prompts measured)", "ids": reqs("asr_requests")},
        {"requests": "over-refusal (harmless prompts measured)", "ids": reqs("over_refusal_requests")},
        {"requests": "head means (ablation reference)", "ids": reqs("head_means_requests")},
        {"requests": "ranking (the heads stage's rollouts)", "ids": reqs("ranking_requests")},
    ]
    checks = []
    for c in design.get("checks") or []:
        d = c.get("disjoint")
        verdict = (
            "not recorded"
            if d is None
            else "disjoint"
            if d
            else ("overlaps (in-sample by design)" if not c.get("held_out") else "NOT DISJOINT")
        )
        cls = "v-no" if c.get("held_out") and d is False else "v-yes" if d else "v-na"
        checks.append(
            f'<tr><td>{esc(c.get("claim"))}</td><td class="verdict {cls}">{esc(verdict)}</td>'
            f"<td>{esc(', '.join(c.get('overlap') or []))}</td><td>{esc(c.get('basis', ''))}</td></tr>"
        )
    folds = []
    for st in design.get("settings") or []:
        for f in st.get("folds") or []:
            folds.append(
                {
                    "setting": st.get("setting"),
                    "fold": f.get("fold"),
                    "ranked on (requests)": ", ".join(f.get("ranked_on") or []),
                    "ASR requests measured with these heads": ", ".join(f.get("asr_requests") or []),
                    "disjoint": "yes" if f.get("disjoint") else "NO",
                }
            )
    ok = design.get("disjoint")
    banner = (
        '<p class="verdict v-yes">Every held-out check is disjoint.</p>'
        if ok
        else '<p class="error">A held-out claim is not held out: see the failing check below.</p>'
    )
    return (
        "<h3>Design: which requests chose, which measured</h3>"
        + (f"<p>{esc(design['selection'])}</p>" if design.get("selection") else "")
        + banner
        + _table(rows, ["requests", "ids"])
        + '<table class="design-checks"><tr><th>claim</th><th>check</th><th>overlap</th><th>read</th></tr>'
        + "".join(checks)
        + "</table>"
        + (_table(folds, list(folds[0])) if folds else "")
    )


def _stability_table(data: ReportData, res: dict) -> str:
    """How often each in-sample top head stays in the top set over bootstrap resamples of the
    requests (``heads.json`` through :class:`cliff_lens.pipeline.HeadsFile`)."""
    stability: dict = {}
    if data.has("heads.json"):
        from cliff_lens.pipeline import HeadsFile

        try:
            stability = HeadsFile.load(data.path("heads.json")).stability
        except (ValueError, KeyError, TypeError):  # the heads section shows the corrupt file
            stability = {}
    stability = stability or (_section(res, "heads").get("stability")) or {}
    rows = []
    for name, st in stability.items():
        if "heads" not in st:
            rows.append({"ranking": name, "head": "", "kept in": f"skipped: {st.get('skipped', '?')}"})
            continue
        freqs = st.get("frequency") or [
            h.get("frequency") if isinstance(h, dict) else None for h in st["heads"]
        ]
        for h, f in zip(st["heads"], freqs):
            hh = (h["layer"], h["head"]) if isinstance(h, dict) else (h[0], h[1])
            freq = h["frequency"] if isinstance(h, dict) else f
            rows.append(
                {
                    "ranking": name,
                    "head": f"L{hh[0]}H{hh[1]}",
                    "kept in": f"{float(freq):.0%} of {st.get('n_boot', '?')} resamples",
                }
            )
    if not rows:
        return ""
    return (
        "<h3>Top-head stability</h3>"
        + _table(rows, ["ranking", "head", "kept in"])
        + '<p class="note">Share of bootstrap resamples of the requests (with replacement) whose '
        "top-k% set keeps the head.</p>"
    )


def _audit_table(rows: list[dict]) -> str:
    """Every harmful prompt's answer under the baseline and under the headline (held-out) setting,
    collapsed; all answer text escaped."""
    base = next((r for r in rows if r.get("kind") == "baseline"), None)
    head = next((r for r in rows if r.get("kind") == "top" and r.get("selection") == "held_out"), None)
    if head is None:
        head = next((r for r in rows if r.get("kind") == "top"), None)
    if base is None or head is None or not head.get("harmful_answers"):
        return ""
    folds = head.get("prompt_folds") or []
    out = []
    for j, (bo, ho) in enumerate(zip(base.get("harmful_outcomes") or [], head.get("harmful_outcomes") or [])):
        out.append(
            {
                "prompt": j,
                "fold": folds[j] if j < len(folds) else "",
                "baseline": bo,
                "baseline answer": (base.get("harmful_answers") or [None] * (j + 1))[j] or "",
                _label(head): ho,
                "answer": head["harmful_answers"][j] or "",
                "changed": "yes" if bo != ho else "",
            }
        )
    return (
        f"<details><summary>Audit: every harmful prompt's answer, baseline vs {esc(_label(head))} "
        f"({len(out)} prompts)</summary>" + _table(out, list(out[0]) if out else []) + "</details>"
    )


def _sec_selection(data: ReportData, ctx: dict) -> str:
    sel = data.results().get("selection")
    if not sel and data.has("selection.json"):
        sj = data.json("selection.json")
        sel = (
            {"summary": {k: v for k, v in sj.items() if k != "selected_ids"}}
            if isinstance(sj, dict)
            else None
        )
    parts = []
    if sel:
        summary = sel.get("summary", sel) if isinstance(sel, dict) else sel
        parts.append(_kv_table(_flatten(summary)) if isinstance(summary, dict) else f"<p>{esc(summary)}</p>")
        if isinstance(sel, dict):
            parts.append(_selection_within_sets(sel))
    p = data.path("selection.jsonl")
    if p.exists():
        recs = []
        for rec in iter_jsonl(p, on_error="skip"):
            recs.append(rec)
            if len(recs) >= ctx["n_selection_rows"]:
                break
        if recs:
            cols = [c for c in recs[0] if not isinstance(recs[0][c], (dict, list))][:8]
            parts.append(f"<h3>First {len(recs)} records of selection.jsonl</h3>" + _table(recs, cols))
    if not parts:
        raise _NotRun("no 'selection' in results.json and no selection.jsonl (the selection stage)")
    return "\n".join(parts)


def _stratified_line(st: Any) -> str:
    """The selection's precision against the framing-stratified baseline, with its exact p."""
    if not isinstance(st, dict) or finite_number(st.get("expected_precision")) is None:
        return ""
    return (
        f"precision {fmt_num(st.get('precision_complied'))} vs framing-stratified baseline "
        f"{fmt_num(st.get('expected_precision'))} (the same number picked at random from each prompt "
        f"set): exact p={fmt_p(st.get('p_value'))}, "
        f"{'significant' if significant(st.get('p_value')) else 'not significant'} at {ALPHA:g}"
    )


def _selection_within_sets(sel: dict) -> str:
    """Cliff-as-a-Judge precision within each prompt set and against the stratified baseline."""
    per = sel.get("by_prompt_set")
    if not isinstance(per, dict) or not per:
        return ""
    rows = [
        {
            "prompt set": name,
            "selected": p.get("n_selected"),
            "complied among selected": fmt_ci(p.get("precision_complied"), p.get("precision_complied_ci95"))
            + f" ({p.get('complied_in_selection')}/{p.get('n_selected')})",
            "set base rate": f"{fmt_num(p.get('base_rate_complied'))} ({p.get('complied_in_pool')}/{p.get('n_pool')})",
        }
        for name, p in per.items()
        if isinstance(p, dict)
    ]
    st = sel.get("stratified_baseline") or {}
    return (
        "<h3>Within each prompt set</h3>"
        + _table(rows, list(rows[0]))
        + f"<p>{esc(_stratified_line(st))}</p>"
        + (
            f'<p class="note">Test: {esc(st["test"])}. Precision: Wilson 95% interval.</p>'
            if st.get("test")
            else ""
        )
    )


def _sec_run_info(data: ReportData, ctx: dict) -> str:
    res = data.results()
    parts = []
    if res.get("timings"):
        t = res["timings"]
        parts.append("<h3>Timings (s)</h3>" + _kv_table(t))
    if res.get("versions"):
        parts.append("<h3>Versions</h3>" + _kv_table(res["versions"]))
    if not parts:
        raise _NotRun("results.json has no timings/versions")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# the Findings section: the paper's claims checked on this run


def _finding(
    fid: str,
    title: str,
    claim: str,
    verdict: str,
    headline: str,
    lines: list[str],
    figure: str = "",
    note: str = "",
) -> str:
    items = "".join(f"<li>{esc(x)}</li>" for x in lines)
    return (
        f'<article class="finding" id="finding-{fid}"><h3>{esc(title)}</h3>'
        f'<p class="claim">Claim: {esc(claim)}</p>'
        f'<p class="verdict {verdict_class(verdict)}"><b>Verdict: {esc(verdict)}</b></p>'
        + (f'<p class="headline">{esc(headline)}</p>' if headline else "")
        + (f"<ul>{items}</ul>" if items else "")
        + figure
        + (f'<p class="note">{esc(note)}</p>' if note else "")
        + "</article>"
    )


def _section(res: dict, key: str) -> dict:
    """``res[key]`` when it is a dict, else ``{}`` (a results.json section that may be missing)."""
    v = res.get(key)
    return v if isinstance(v, dict) else {}


def _split_line(name: str, s: Any, threshold: Any) -> str:
    if not _measured(s):
        return f"{name}: not measured (no rollout)"
    share = ""
    if finite_number(s.get("cliff_share")) is not None:
        thr = f" (drop >= {fmt_num(threshold)})" if finite_number(threshold) is not None else ""
        share = (
            f"; share of rollouts with a cliff{thr} {fmt_ci(s.get('cliff_share'), s.get('cliff_share_ci95'))}"
        )
    return (
        f"{name} (n={s['n_rollouts']}): plateau {fmt_ci(s.get('plateau_mean'), s.get('plateau_ci95'))}"
        f" -> final {fmt_ci(s.get('final_mean'), s.get('final_ci95'))}; "
        f"drop {fmt_ci(s.get('cliff_mean'), s.get('cliff_ci95'))}{share}"
    )


def _finding_cliff(data: ReportData, ctx: dict, res: dict) -> tuple[str, str]:
    cliff = _section(res, "cliff")
    verdict = verdict_cliff(cliff)
    thr = cliff.get("cliff_threshold")
    lines = [
        _split_line(name, cliff.get(key), thr)
        for key, name in (
            ("harmful_complied", "harmful, complied"),
            ("harmful_refused", "harmful, refused"),
            ("harmless_helped", "harmless, helped"),
        )
        if key in cliff
    ]
    if cliff and not lines:
        lines = [_split_line(k, cliff.get(k), thr) for k in ("harmful", "harmless") if k in cliff]
    small = [
        f"{k.replace('harmful_', '')} n={v['n_rollouts']}"
        for k, v in cliff.items()
        if k in ("harmful_complied", "harmful_refused") and _measured(v) and v["n_rollouts"] < 10
    ]
    if small:
        lines.append(
            f"caution: {', '.join(small)}: percentile-bootstrap intervals from fewer than 10 rollouts "
            "understate the uncertainty"
        )
    scored = cliff.get("scored_by")
    figure, fig_note = "", ""
    try:
        figure, fig_note = _cliff_figure(data, ctx)
    except _NotRun as e:
        figure = _not_run(f"figure: {e}")
    note = (
        "Plateau: mean score over the late thinking span; final: the score at the last "
        "end-of-thinking token; drop = plateau - final, per rollout, averaged (95% percentile "
        "bootstrap interval over rollouts; shares: Wilson interval). "
        + (f"Scores: {scored}. " if scored else "Scores: source not recorded (may be in-sample). ")
        + "Verdict 'cliff' when the complied drop's 95% interval is above 0 and above the refused "
        "drop's interval (non-overlapping intervals: conservative). " + fig_note
    )
    block = _finding(
        "cliff",
        "(a) The refusal cliff",
        "harmful rollouts that end up complying keep a high refusal score while thinking and lose "
        "it at the end of thinking; rollouts that refuse do not.",
        verdict,
        cliff_headline(cliff) if cliff else "",
        lines,
        figure,
        note,
    )
    return block, verdict


def _finding_probe(data: ReportData, ctx: dict, res: dict) -> tuple[str, str]:
    probe = _section(res, "probe")
    verdict = verdict_probe(probe)
    lines = []
    if probe:
        val = (probe.get("metrics") or {}).get("val") if isinstance(probe.get("metrics"), dict) else None
        n = _n(probe, "n_val") or _n(val, "n")
        n_s = f" (n={n})" if n else ""
        lines = [
            f"accuracy (threshold 0.5){n_s}: {fmt_ci(probe.get('val_accuracy'), probe.get('val_accuracy_ci95'))}",
            f"AUROC{n_s}: {fmt_ci(probe.get('val_auroc'), probe.get('val_auroc_ci95'))}",
            f"evaluated on: {probe.get('val_source') or 'held-out split (source not recorded)'}",
            f"probe: {probe.get('hook', '?')}, layer {probe.get('layer', '?')}, "
            f"trained on {probe.get('n_train', '?')} examples",
        ]
    block = _finding(
        "probe",
        "(b) The probe is accurate on held-out data",
        "a linear probe on the residual stream separates refusing from complying rollouts on data it "
        "was not trained on.",
        verdict,
        "",
        lines,
        note="Accuracy: Wilson interval; AUROC: stratified bootstrap interval. Out-of-fold: every "
        "example scored by the cross-fitted fold probe that did not see it."
        if probe
        else "",
    )
    return block, verdict


def _finding_heads(data: ReportData, ctx: dict, res: dict) -> tuple[str, str]:
    try:
        heads = _heads_info(data)
    except ValueError:
        heads = res.get("heads") or {}
    verdict = verdict_heads(heads)
    lines = []
    top = heads.get("top") or []
    if top:
        has_contrast = any(isinstance(t, dict) and finite_number(t.get("contrast")) is not None for t in top)
        shown = []
        for t in top[:12]:
            extra = (
                f", contrast {float(t['contrast']):+.3f}"
                if has_contrast and finite_number(t.get("contrast")) is not None
                else ""
            )
            shown.append(f"L{t['layer']}H{t['head']} ({float(t['score']):+.3f}{extra})")
        pct = (
            f"top {heads['top_percent']:g}%: " if finite_number(heads.get("top_percent")) is not None else ""
        )
        lines.append(f"{pct}{', '.join(shown)}" + (f" and {len(top) - 12} more" if len(top) > 12 else ""))
        lines.append(
            f"attribution variant: {heads.get('variant', '?')}; heads in the model: {heads.get('n_heads_total', '?')}"
        )
        tc = [t for t in heads.get("top_contrast") or [] if isinstance(t, dict)]
        if tc:
            names = [f"L{t['layer']}H{t['head']} ({float(t['score']):+.3f})" for t in tc[:12]]
            both = {(t["layer"], t["head"]) for t in tc} & {(t["layer"], t["head"]) for t in top}
            lines.append(
                "top by the complied-minus-refused contrast: "
                + ", ".join(names)
                + f"; {len(both)} of {len(tc)} also among the top heads above"
            )
        elif not has_contrast:
            lines.append("complied-vs-refused contrast: not measured")
    block = _finding(
        "heads",
        "(c) Suppression heads",
        "a few attention heads write against the refusal direction at the end of thinking.",
        verdict,
        "",
        lines,
        note="Score: the head's direct write on the probe's refusal direction at the end-of-thinking "
        "tokens (most negative = strongest suppression); heatmap under Heads."
        if top
        else "",
    )
    return block, verdict


def _kind_pct(row: dict) -> tuple[str, float | None]:
    """(kind, top_percent) of an ablation row, from ``kind``/``top_percent`` or its setting name."""
    kind, pct = row.get("kind"), finite_number(row.get("top_percent"))
    if kind in (None, "") or (kind in ("top", "random") and pct is None):
        try:
            p = parse_setting(str(row.get("setting", "")))
            kind, pct = p["kind"], p["percent"]
        except ValueError:
            kind = kind or "custom"
    return str(kind), pct


def _random_summaries(data: ReportData, res: dict, rows: list[dict]) -> dict[float, dict]:
    """``top_percent -> random_summary row`` (results.json, ablation.json, or pooled here)."""
    out: dict[float, dict] = {}
    cands = list(res.get("ablation_random_summary") or [])
    try:
        aj = data.json("ablation.json")
        if isinstance(aj, dict):
            cands += [
                r
                for r in aj.get("settings") or []
                if isinstance(r, dict) and r.get("kind") == "random_summary"
            ]
    except (_NotRun, ValueError):
        pass
    for r in cands:
        if isinstance(r, dict) and finite_number(r.get("top_percent")) is not None:
            out.setdefault(float(r["top_percent"]), r)
    pooled: dict[float, list[float]] = {}
    for r in rows:
        kind, pct = _kind_pct(r)
        if kind == "random" and pct is not None and finite_number(r.get("asr")) is not None:
            pooled.setdefault(pct, []).append(float(r["asr"]))
    for pct, vals in pooled.items():
        if pct not in out:
            out[pct] = {
                "top_percent": pct,
                "seeds": list(range(len(vals))),
                "asr_mean": float(np.mean(vals)),
                "asr_min": min(vals),
                "asr_max": max(vals),
            }
    return out


def _outcome_note(row: dict) -> str:
    """``harmful outcomes: 0 refused, 1 complied, 3 no answer (thinking never closed in 75%)``
    when some harmful rollouts gave no answer (a no-answer lowers ASR without a refusal)."""
    no_ans = _n(row, "n_harmful_no_answer")
    if not no_ans:
        return ""
    parts = [f"{row.get('n_harmful_refused', '?')} refused", f"{row.get('n_harmful_complied', '?')} complied"]
    unclosed = finite_number(row.get("harmful_unclosed"))
    tail = f" (thinking never closed in {unclosed:.0%})" if unclosed else ""
    return (
        f"harmful outcomes: {', '.join(parts)}, {no_ans} no answer{tail}; a no-answer is not an attack "
        "success: part of the ASR change is no-answers, not refusals"
    )


def _capability_cost(row: dict) -> str | None:
    """The capability cost of an ablated setting, or ``None`` when not measured.

    Reads ``row["capability"]`` (:meth:`cliff_lens.capability.InterventionCost.to_dict`:
    ``{"kl": {"value", "n", "ci95"}, "answer_logprob_delta": {...}, "n_rollouts", ...}``), else
    a plain ``kl`` (number with ``kl_ci95``, or ``{"value", "ci95"}``)."""
    cap = row.get("capability")
    if (
        isinstance(cap, dict)
        and isinstance(cap.get("kl"), dict)
        and finite_number(cap["kl"].get("value")) is not None
    ):
        kl = cap["kl"]
        out = f"KL {fmt_ci(kl.get('value'), kl.get('ci95'), 3)} nats per answer token"
        d = cap.get("answer_logprob_delta")
        if isinstance(d, dict) and finite_number(d.get("value")) is not None:
            out += f", answer log-prob change {fmt_ci(d.get('value'), d.get('ci95'), 3)}"
        n = _n(cap, "n_rollouts") or _n(kl, "n")
        return out + (f" (n={n} harmless rollouts, teacher-forced)" if n else "")
    for key in ("kl", "kl_to_baseline", "capability_cost"):
        v = row.get(key)
        if isinstance(v, dict):
            return f"{key} {fmt_ci(v.get('value', v.get('mean')), v.get('ci95'), 3)}"
        if finite_number(v) is not None:
            return f"{key} {fmt_ci(v, row.get(key + '_ci95'), 3)}"
    return None


def _headline_row(res: dict, tops: list[dict]) -> dict | None:
    """The top-k% row of the headline k (``heads.top_percent``, else the first configured k)."""
    want = finite_number(_section(res, "heads").get("top_percent"))
    if want is None:
        cfg_pcts = _section(res, "config").get("top_percents")
        want = finite_number(cfg_pcts[0]) if isinstance(cfg_pcts, list) and cfg_pcts else None
    ordered = sorted(tops, key=lambda r: r.get("selection") == "in_sample")  # held-out first
    return next((r for r in ordered if _kind_pct(r)[1] == want), ordered[0] if ordered else None)


def _baseline_line(base: dict) -> str:
    return (
        f"baseline: ASR {fmt_ci(base.get('asr'), base.get('asr_ci95'))}"
        f" (n={base.get('n_harmful', '?')} harmful prompts); over-refusal "
        f"{fmt_ci(base.get('over_refusal'), base.get('over_refusal_ci95'))}"
        + (f" (n={base['n_harmless']} harmless prompts)" if base.get("n_harmless") else "")
    )


def _random_line(k: float, name: str, r: dict, s: dict) -> str:
    """The random-k% sets beside a top-k% row: mean and range of their ASR, its empirical p."""
    p, n_sets = _vs_random(r, s)
    return (
        f"random-{k:g}% ({n_sets or '?'} set{'' if n_sets == 1 else 's'}): "
        f"ASR mean {fmt_num(s.get('asr_mean'))}, "
        f"range {fmt_num(s.get('asr_min'))}-{fmt_num(s.get('asr_max'))}; "
        f"{name} vs random: empirical p={fmt_p(p)}"
        + (
            f"; random sets' mean KL {fmt_num(s.get('kl_mean'), 3)}"
            if finite_number(s.get("kl_mean")) is not None
            else ""
        )
    )


def _top_row_lines(r: dict, summaries: dict[float, dict], *, headline: bool) -> list[str]:
    """The finding's lines of one top-k% row: ASR with its McNemar test, outcomes, the random sets,
    over-refusal, and (rows other than the headline one) its own verdict."""
    k = _kind_pct(r)[1]
    name = _label(r)
    m = _mcnemar(r, "asr")
    test = (
        f"; McNemar vs baseline p={fmt_p(m['p_value'])} (successes lost {m.get('baseline_only', '?')}, "
        f"gained {m.get('setting_only', '?')})"
        if m
        else ""
    )
    nh = r.get("n_heads")
    n_heads = f" ({nh} head{'' if nh == 1 else 's'})" if nh is not None else ""
    lines = [f"{name}{n_heads}: ASR {fmt_ci(r.get('asr'), r.get('asr_ci95'))}{test}"]
    outcomes = _outcome_note(r)
    if outcomes:
        lines.append(f"{name}: {outcomes}")
    s = summaries.get(k) if k is not None else None
    if s and k is not None:
        lines.append(_random_line(k, name, r, s))
    vm = r.get("vs_random_matched")
    if isinstance(vm, dict) and finite_number(vm.get("asr_empirical_p")) is not None:
        lines.append(
            f"layer-matched random-{k if k is None else f'{k:g}'}% ({vm.get('n_sets', '?')} sets): ASR mean "
            f"{fmt_num(vm.get('asr_mean'))}, range {fmt_num(vm.get('asr_min'))}-{fmt_num(vm.get('asr_max'))}; "
            f"{name} vs layer-matched: empirical p={fmt_p(vm.get('asr_empirical_p'))}"
        )
    if r.get("selection") == "in_sample":
        lines.append(f"{name}: ranked on every rollout, the ASR prompts' own included: not held out")
    if finite_number(r.get("over_refusal")) is not None:
        lines.append(
            f"{name} over-refusal {fmt_ci(r.get('over_refusal'), r.get('over_refusal_ci95'))}: "
            f"{verdict_over_refusal(r)}"
        )
    if not headline:
        lines.append(f"{name} verdict: {verdict_ablation(r, s)}")
    return lines


def _finding_ablation(data: ReportData, ctx: dict, res: dict) -> tuple[str, str]:
    try:
        rows = _ablation_rows(data)
    except _NotRun:
        rows = []
    base = next((r for r in rows if _kind_pct(r)[0] == "baseline"), None)
    tops = [r for r in rows if _kind_pct(r)[0] == "top"]
    summaries = _random_summaries(data, res, rows)
    head_row = _headline_row(res, tops)
    head_pct = _kind_pct(head_row)[1] if head_row else None
    rs = summaries.get(head_pct) if head_pct is not None else None
    verdict = verdict_ablation(head_row, rs) if head_row else "not measured (no top-k% ablation row)"
    lines: list[str] = [_baseline_line(base)] if base is not None else []
    headline = ""
    for r in sorted(tops, key=lambda r: (r is not head_row, _kind_pct(r)[1] or 0.0)):
        lines += _top_row_lines(r, summaries, headline=r is head_row)
    if head_row is not None:
        cost = _capability_cost(head_row)
        lines.append(f"capability cost of {head_row.get('setting', '?')}: " + (cost or "not measured"))
        if base is not None:
            headline = (
                f"ASR {fmt_ci(base.get('asr'), base.get('asr_ci95'))} (baseline) -> "
                f"{fmt_ci(head_row.get('asr'), head_row.get('asr_ci95'))} ({head_row.get('setting', '?')} ablated)"
            )
    figure = ""
    if rows:
        try:
            figure = asr_bars(rows).to_html()
        except ValueError as e:
            figure = _not_run(f"figure: {e}")
    block = _finding(
        "ablation",
        "(d) Ablating the top-k% suppression heads lowers attack success",
        "with the top-k% suppression heads ablated, fewer harmful prompts are answered (lower ASR) than "
        "without ablation, and fewer than with random sets of k heads ablated; harmless prompts are not "
        "refused more.",
        verdict,
        headline,
        lines,
        figure,
        (
            "ASR and over-refusal: Wilson 95% intervals (whiskers on baseline and top-k% bars, and on a "
            "random-k% bar of a single set); random-k% bars of several sets: mean over the sets, whisker "
            "min..max, dots the sets. McNemar: exact, paired by prompt, "
            "two-sided. Empirical p: (1 + #random sets with ASR <= top-k% ASR) / (1 + #sets)."
        )
        if rows
        else "",
    )
    return block, verdict


def _finding_selection(data: ReportData, ctx: dict, res: dict) -> tuple[str, str]:
    sel = res.get("selection")
    summary = sel.get("summary", sel) if isinstance(sel, dict) else None
    if not isinstance(summary, dict) and data.has("selection.json"):
        try:
            sj = data.json("selection.json")
            summary = {k: v for k, v in sj.items() if k != "selected_ids"} if isinstance(sj, dict) else None
        except ValueError:
            summary = None
    verdict = verdict_selection(summary)
    lines = []
    if isinstance(summary, dict):
        base = finite_number(summary.get("base_rate_complied"))
        if base is None and _n(summary, "n_pool") and _n(summary, "complied_in_pool") is not None:
            base = summary["complied_in_pool"] / summary["n_pool"]
        k_sel, k_pool = _n(summary, "complied_in_selection"), _n(summary, "complied_in_pool")
        lines = [
            f"precision (complied among the selected): "
            f"{fmt_ci(summary.get('precision_complied'), summary.get('precision_complied_ci95'))}"
            + (
                f" ({k_sel}/{summary.get('n_selected')})"
                if k_sel is not None
                else f" (n={summary.get('n_selected', '?')})"
            ),
            f"base rate (complied in the pool): {fmt_num(base)}"
            + (f" ({k_pool}/{summary.get('n_pool')})" if k_pool is not None else ""),
            f"selection: top {fmt_pct(summary.get('top_percent'))} of {summary.get('n_pool', '?')} harmful "
            f"rollouts by {summary.get('variant', '?')}",
        ]
        strat = _stratified_line(sel.get("stratified_baseline") if isinstance(sel, dict) else None)
        if strat:
            lines.append(strat)
    block = _finding(
        "selection",
        "(e) Cliff-as-a-Judge finds complied rollouts",
        "ranking harmful rollouts by their cliff selects complied (misaligned) ones more often than "
        "their share in the pool.",
        verdict,
        "",
        lines,
        note="Precision: Wilson 95% interval; the base rate is the pool's own share (no sampling)."
        if lines
        else "",
    )
    return block, verdict


def _run_context(res: dict) -> str:
    d = _section(res, "data")
    model = _section(res, "model")
    bits = []
    if model.get("source"):
        bits.append(f"model {model['source']}")
    for g in ("harmful", "harmless"):
        n = d.get(f"n_{g}")
        if n is not None or f"{g}_refusal_rate" in d:
            bits.append(
                f"{n if n is not None else '?'} {g} rollouts, refusal rate "
                f"{fmt_ci(d.get(f'{g}_refusal_rate'), d.get(f'{g}_refusal_rate_ci95'))}"
            )
    return f'<p class="run-context">This run: {esc("; ".join(bits))}.</p>' if bits else ""


_FINDINGS = (_finding_cliff, _finding_probe, _finding_heads, _finding_ablation, _finding_selection)


def _sec_findings(data: ReportData, ctx: dict) -> str:
    res = data.results()
    blocks, summary = [], []
    for fn in _FINDINGS:
        try:
            block, verdict = fn(data, ctx, res)
            m = re.search(r"<h3>(.*?)</h3>", block)
            if m is None:
                raise ValueError("the finding has no <h3> title")
            title = m.group(1)
        except Exception as e:  # noqa: BLE001 - one finding must not sink the others
            name = fn.__name__.removeprefix("_finding_")
            verdict = f"not measured (could not evaluate: {type(e).__name__}: {e})"
            block = (
                f'<article class="finding" id="finding-{esc(name)}">'
                f'<p class="error">{esc(name)}: {esc(verdict)}</p></article>'
            )
            title = esc(name)
        summary.append(
            f'<tr><td>{title}</td><td class="verdict {verdict_class(verdict)}">{esc(verdict)}</td></tr>'
        )
        blocks.append(block)
    return (
        _run_context(res)
        + '<table class="at-a-glance"><tr><th>claim</th><th>verdict on this run</th></tr>'
        + "".join(summary)
        + "</table>\n"
        + "\n".join(blocks)
        + '<p class="note">All intervals are 95%. "not shown at this n": the data do not support the '
        "claim at this sample size (which is not evidence against it). The raw tables follow.</p>"
    )


_BUILDERS: dict[str, Callable[[ReportData, dict], str]] = {
    "findings": _sec_findings,
    "model": _sec_model,
    "probe": _sec_probe,
    "trajectory": _sec_trajectory,
    "tokens": _sec_tokens,
    "layer-position": _sec_layer_position,
    "heads": _sec_heads,
    "attention": _sec_attention,
    "ablation": _sec_ablation,
    "selection": _sec_selection,
    "run-info": _sec_run_info,
}


def build_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    model: Any = None,
    *,
    tokenizer: Any = None,
    trajectory_length: int = 96,
    n_token_examples: int = 4,
    n_attention_rollouts: int = 1,
    max_attention_heads: int = 12,
    max_keys: int = 256,
    n_selection_rows: int = 10,
) -> Path:
    """Write a self-contained offline HTML report of a run directory.

    Args:
        run_dir: the run directory (``results.json``, ``rollouts.jsonl``,
            ``trajectories.safetensors`` + ``.json``, ``heads.json``, ``ablation.json``,
            ``selection.jsonl``, ``probe.json``, ``run.json``; any may be missing).
        out: output path (default ``run_dir/report.html``).
        model: the run's ``HookedTransformer`` (with ``tokenizer``); needed for the attention
            views of the suppression heads ("not run" without it) and to decode tokens.
        tokenizer: decodes token ids for the per-rollout colouring (default ``model.tokenizer``;
            without either, tokens are shown as ids).
        trajectory_length: tail-aligned positions shown in the trajectory plots and the map.
        n_token_examples: rollouts shown with per-token colouring.
        n_attention_rollouts: harmful rollouts (jailbroken first) shown in the attention views.
        max_attention_heads: top heads shown in each attention view.
        max_keys: at most this many key tokens per attention view.
        n_selection_rows: records of ``selection.jsonl`` listed.

    Returns:
        The path of the written report.
    """
    data = ReportData(run_dir)
    out = Path(out) if out is not None else data.dir / "report.html"
    if tokenizer is None and model is not None:
        tokenizer = getattr(model, "tokenizer", None)
    ctx = {
        "model": model,
        "tokenizer": tokenizer,
        "trajectory_length": trajectory_length,
        "n_token_examples": n_token_examples,
        "n_attention_rollouts": n_attention_rollouts,
        "max_attention_heads": max_attention_heads,
        "max_keys": max_keys,
        "n_selection_rows": n_selection_rows,
    }
    res = data.results()
    banner = _schema_banner(data, res)
    body = _render_sections(data, ctx)
    source = (res.get("model") or {}).get("source", "") if res else ""
    nonce = secrets.token_urlsafe(16)
    page = _page(
        title=f"cliff_lens report{' · ' + str(source) if source else ''}",
        banner=banner,
        body="\n".join(body),
        nonce=nonce,
    )
    atomic_write_text(out, page)
    return out


def _schema_banner(data: ReportData, res: dict) -> str:
    """The banner above the sections: results.json missing, or its schema problems."""
    from cliff_lens.results_schema import validate_results

    if not data.has("results.json"):
        return _not_run("results.json is missing: sections read the stage files only")
    problems = validate_results(res, partial=True, raise_on_error=False) if res else []
    if not problems:
        return ""
    return (
        '<p class="error">results.json does not match the schema:\n' + esc("\n".join(problems[:20])) + "</p>"
    )


def _render_sections(data: ReportData, ctx: dict) -> list[str]:
    """Every section's HTML; a missing stage file says "not run", a broken one shows its error."""
    body = []
    for key, title in SECTIONS:
        try:
            content = _BUILDERS[key](data, ctx)
        except _NotRun as e:
            content = _not_run(str(e))
        except Exception as e:  # noqa: BLE001 - one broken stage file must not sink the report
            content = f'<p class="error">could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        body.append(f'<section id="{key}"><h2>{esc(title)}</h2>\n{content}\n</section>')
    return body


def _page(*, title: str, banner: str, body: str, nonce: str) -> str:
    csp = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}' 'unsafe-eval'; "
        "style-src 'unsafe-inline'; img-src data:; font-src 'none'; connect-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in SECTIONS)
    # every <script> we emit gets the nonce; user text is escaped, so it cannot create one
    body = re.sub(r"<script>", f'<script nonce="{nonce}">', body)
    bundle = circuitsvis_bundle()
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script nonce="{nonce}" id="circuitsvis-bundle">\n{bundle}\n</script>\n'
        f"</head><body><nav>{nav}</nav><main><h1>{esc(title)}</h1>\n{banner}\n{body}\n</main></body></html>\n"
    )
