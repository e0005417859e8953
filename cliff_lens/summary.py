"""Text views of a run's ``results.json``: the one-screen CLI summary and the README's demo table.

Both print every rate and mean with its n and 95% interval, and each ablation setting with its
paired test against the baseline (exact McNemar) and its place among random head sets.
:func:`markdown_table` is how the README's demo table is made from the committed
``benchmarks/results/demo/results.json`` (a test checks that the two agree).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["summary", "markdown_table"]


def summary(results: dict, out: Path) -> str:
    """A one-screen text summary of a run: every rate and mean with its n and 95% interval."""
    lines = [f"cliff-lens run: {results.get('model', {}).get('source')}  ->  {out}"]
    d = results.get("data", {})
    if d.get("n_rollouts") is not None:
        lines.append(
            f"  rollouts  {d['n_rollouts']} ({d['n_harmful']} harmful, {d['n_harmless']} harmless); "
            f"unclosed thinking {d['unclosed_thinking']}"
        )
        lines.append(
            f"  refusal   harmful {_pct(d.get('harmful_refusal_rate'), d.get('harmful_refusal_rate_ci95'))}"
            f" (n={d['n_harmful']}), harmless "
            f"{_pct(d.get('harmless_refusal_rate'), d.get('harmless_refusal_rate_ci95'))} (n={d['n_harmless']})"
        )
    p = results.get("probe")
    if p:
        lines.append(
            f"  probe     {p['hook']} layer {p['layer']}: held-out acc "
            f"{_f(p['val_accuracy'], p.get('val_accuracy_ci95'))}, AUROC "
            f"{_f(p['val_auroc'], p.get('val_auroc_ci95'))}, n_train {p['n_train']}"
        )
    c = results.get("cliff")
    if c:
        if c.get("scored_by"):
            lines.append(f"  cliff     scored {c['scored_by']}")
        for g in ("harmful_refused", "harmful_complied", "harmless_helped"):
            b = c.get(g, {})
            if b.get("n_rollouts"):
                lines.append(
                    f"  cliff     {g:<17} n={b['n_rollouts']:<4} plateau {_f(b['plateau_mean'])} -> "
                    f"final {_f(b['final_mean'])}, cliff {_f(b['cliff_mean'], b.get('cliff_ci95'))}"
                )
    h = results.get("heads")
    if h:
        top = ", ".join(f"L{t['layer']}H{t['head']} ({t['score']:+.3f})" for t in h["top"][:6])
        lines.append(
            f"  heads     top {len(h['top'])}/{h['n_heads_total']} suppression ({h['variant']}): {top}"
        )
    if h:
        lines += _stability_lines(h)
    holm = {f["finding"]: f["p_holm"] for f in (results.get("holm") or {}).get("findings", [])}
    for a in results.get("ablation", []):
        if a.get("kind") in _NULL_KINDS:
            continue
        name = _setting_label(a)
        vb = a.get("vs_baseline") or {}
        test = ""
        if vb.get("asr"):
            test = f"  McNemar p={vb['asr']['p_value']:.3f}" + _holm(holm, a, "ASR vs baseline (McNemar)")
        for key, what, finding in (
            ("vs_random", "uniform random", "ASR vs uniform random sets"),
            ("vs_random_matched", "layer-matched", "ASR vs layer-matched random sets"),
        ):
            vr = a.get(key) or {}
            if vr.get("asr_empirical_p") is not None:
                test += f", vs {vr['n_sets']} {what} sets p={vr['asr_empirical_p']:.3f}" + _holm(
                    holm, a, finding
                )
        kl = ((a.get("capability") or {}).get("kl")) or {}
        if kl.get("value") is not None:
            test += f"; KL {_f(kl['value'], kl.get('ci95'))}"
        lines.append(
            f"  ablation  {name:<18} ASR {_pct(a['asr'], a.get('asr_ci95'))}"
            f"{_count(a.get('n_attack_success'), a.get('n_harmful'))}  over-refusal "
            f"{_pct(a['over_refusal'], a.get('over_refusal_ci95'))}"
            f"{_count(a.get('n_over_refusal'), a.get('n_harmless'))}{test}"
        )
    for a in results.get("ablation_random_summary", []):
        lines.append(
            f"  ablation  {a['setting']:<18} ASR mean {_pct(a['asr_mean'])} "
            f"(range {_pct(a['asr_min'])}-{_pct(a['asr_max'])}), over-refusal {_pct(a['over_refusal_mean'])}"
        )
    lines += _design_lines(results.get("design"))
    sel = results.get("selection") or {}
    s = sel.get("summary")
    if s:
        lines.append(
            f"  selection top {s['top_percent']:g}% by {s['variant']}: {s['complied_in_selection']} of "
            f"{s['n_selected']} complied, precision {_f(s['precision_complied'], s.get('precision_complied_ci95'))}"
            f" (pool base rate {s['complied_in_pool']}/{s['n_pool']})"
        )
    lines += _confound_lines(c or {}, sel)
    t = results.get("timings", {})
    if t:
        lines.append("  timings   " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items() if v is not None))
    if (out / "report.html").exists():
        lines.append(f"  report    {out / 'report.html'}")
    return "\n".join(lines)


#: ablation rows that are random head sets (the nulls), summarised on their own lines
_NULL_KINDS = ("random", "random_matched")


def _setting_label(a: dict) -> str:
    """A setting's name, ``top-3% (in-sample)`` for a top set ranked on every rollout."""
    name = str(a["setting"])
    if a.get("selection") == "in_sample" or name.endswith(" in-sample"):
        return name.removesuffix(" in-sample") + " (in-sample)"
    return name


def _holm(holm: dict[str, float], a: dict, finding: str) -> str:
    """`` (Holm p=0.500)``: the Holm-adjusted p of this row's finding, when the run lists it."""
    p = holm.get(f"{a['setting']}: {finding}")
    return "" if p is None else f" (Holm {p:.3f})"


def _stability_lines(h: dict) -> list[str]:
    """How often each in-sample top head stays in the top set when the requests are resampled."""
    out = []
    for name, st in (h.get("stability") or {}).items():
        if "skipped" in st:
            out.append(f"  stability {name}: skipped ({st['skipped']})")
            continue
        heads = ", ".join(f"L{x['layer']}H{x['head']} {x['frequency']:.2f}" for x in st.get("heads", [])[:8])
        out.append(f"  stability {name} top heads kept in {st.get('n_boot')} request bootstraps: {heads}")
    return out


def _design_lines(d: Any) -> list[str]:
    """The held-out design's disjointness checks: one line, and every failing check by name."""
    if not isinstance(d, dict):
        return []
    held = [c for c in d.get("checks", []) if c.get("held_out")]
    bad = [c for c in held if c.get("disjoint") is not True]
    lines = [
        f"  design    {len(held) - len(bad)}/{len(held)} held-out checks disjoint "
        f"({len(d.get('asr_requests', []))} ASR requests, {len(d.get('over_refusal_requests', []))} over-refusal, "
        f"{len(d.get('head_means_requests') or [])} head-means)"
    ]
    for c in bad:
        what = (
            "not recorded" if c.get("disjoint") is None else "overlap " + ", ".join(c.get("overlap", [])[:5])
        )
        lines.append(f"  design    NOT DISJOINT: {c['claim']}: {what}")
    return lines


def _confound_lines(c: dict, sel: dict) -> list[str]:
    """Within each prompt set: the complied vs refused cliff, and the selection's precision against
    the framing-stratified baseline."""
    lines = []
    for name, b in (c.get("by_prompt_set") or {}).items():
        co, re_ = b["complied"], b["refused"]
        lines.append(
            f"  within    {name:<17} cliff complied {_f(co['cliff_mean'], co.get('cliff_ci95'))} (n={co['n']}"
            f"{'' if _has_ci(co) else ', no interval'}) vs refused {_f(re_['cliff_mean'], re_.get('cliff_ci95'))}"
            f" (n={re_['n']}{'' if _has_ci(re_) else ', no interval'})"
        )
    for name, p in (sel.get("by_prompt_set") or {}).items():
        lines.append(
            f"  within    {name:<17} selection {p['complied_in_selection']}/{p['n_selected']} complied, "
            f"precision {_f(p['precision_complied'], p.get('precision_complied_ci95'))} "
            f"(set base rate {p['complied_in_pool']}/{p['n_pool']})"
        )
    st = sel.get("stratified_baseline")
    if st:
        lines.append(
            f"  within    selection precision {_f(st['precision_complied'])} vs framing-stratified baseline "
            f"{_f(st['expected_precision'])}: exact p={_f(st['p_value'])}"
        )
    return lines


def _has_ci(b: dict) -> bool:
    """Whether a within-set cliff mean has both bounds of its interval."""
    ci = b.get("cliff_ci95") or [None, None]
    return ci[0] is not None and ci[1] is not None


def _count(k: Any, n: Any) -> str:
    """`` (18/32)``: the count behind a rate, when known."""
    return "" if k is None or n is None else f" ({k}/{n})"


def _interval(ci: Any, fmt: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _f(x: Any, ci: Any = None) -> str:
    """``0.620 [0.390, 0.810]``: a number with its 95% interval when given."""
    return "n/a" if x is None else f"{x:.3f}" + _interval(ci, lambda v: f"{v:.3f}")


def _pct(x: Any, ci: Any = None) -> str:
    """``62% [39%, 81%]``: a rate with its 95% interval when given."""
    return "n/a" if x is None else f"{100 * x:.0f}%" + _interval(ci, lambda v: f"{100 * v:.0f}%")


def _rate_cell(x: Any, ci: Any, k: Any = None, n: Any = None) -> str:
    if x is None:
        return "n/a"
    count = f" ({k}/{n})" if k is not None and n is not None else ""
    return f"{x:.2f}{count} [{_num(ci, 0)}, {_num(ci, 1)}]"


def _num(ci: Any, i: int) -> str:
    return "n/a" if not ci or ci[i] is None else f"{ci[i]:.2f}"


def markdown_table(results: dict) -> str:
    """The README's demo table: each headline number with n, 95% interval and test, as Markdown."""
    rows = (
        _data_rows(results)
        + _heads_rows(results)
        + _ablation_rows(results)
        + _design_rows(results)
        + _selection_rows(results)
    )
    lines = ["| | value [95% CI] |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def _data_rows(results: dict) -> list[tuple[str, str]]:
    """Rollouts, refusal rates, the probe and the cliff per group."""
    d, p, c = results["data"], results["probe"], results["cliff"]
    rows = [
        (
            "rollouts",
            f"{d['n_rollouts']} ({d['n_harmful']} harmful, {d['n_harmless']} harmless), "
            f"{d['unclosed_thinking']} with unclosed thinking",
        ),
        (
            "refusal rate, harmful",
            _rate_cell(d["harmful_refusal_rate"], d.get("harmful_refusal_rate_ci95"))
            + f" of {d['n_harmful']}",
        ),
        (
            "refusal rate, harmless",
            _rate_cell(d["harmless_refusal_rate"], d.get("harmless_refusal_rate_ci95"))
            + f" of {d['n_harmless']}",
        ),
        (
            "probe held-out accuracy / AUROC (cross-fitted)",
            f"{_rate_cell(p['val_accuracy'], p.get('val_accuracy_ci95'))} / "
            f"{_rate_cell(p['val_auroc'], p.get('val_auroc_ci95'))} (n_train {p['n_train']})",
        ),
    ]
    for g in ("harmful_complied", "harmful_refused", "harmless_helped"):
        b = c.get(g) or {}
        if b.get("n_rollouts"):
            rows.append(
                (
                    f"plateau -> final, {g.replace('_', ' ')} (out-of-sample)",
                    f"{b['plateau_mean']:.2f} -> {b['final_mean']:.2f}, cliff {_rate_cell(b['cliff_mean'], b.get('cliff_ci95'))}"
                    f", n={b['n_rollouts']}",
                )
            )
    return rows


def _heads_rows(results: dict) -> list[tuple[str, str]]:
    """The top heads (and the contrast ranking's, when measured)."""
    h = results.get("heads") or {}
    if not h:
        return []
    rows = [
        (
            f"top {h['top_percent']:g}% heads ({len(h['top'])} of {h['n_heads_total']}), {h['variant']}, ranked in sample",
            ", ".join(f"L{t['layer']}H{t['head']}" for t in h["top"]),
        )
    ]
    st = (h.get("stability") or {}).get("paper") or {}
    if st.get("heads"):
        rows.append(
            (
                f"... how often each stays in the top set ({st['n_boot']} bootstraps over requests)",
                ", ".join(f"L{t['layer']}H{t['head']} {t['frequency']:.2f}" for t in st["heads"]),
            )
        )
    for f in ((h.get("held_out") or {}).get("paper") or {}).get(f"{h['top_percent']:g}") or []:
        rows.append(
            (
                f"held-out top {h['top_percent']:g}% for fold {f['fold']} (ranked on {f['n_ranked_on']} other requests)",
                ", ".join(f"L{la}H{hd}" for la, hd in f["heads"]),
            )
        )
    if h.get("top_contrast"):
        rows.append(
            (
                "top heads by contrast (complied - refused)",
                ", ".join(f"L{t['layer']}H{t['head']}" for t in h["top_contrast"]),
            )
        )
    return rows


def _ablation_rows(results: dict) -> list[tuple[str, str]]:
    """ASR / over-refusal of every non-random setting with its tests and capability cost."""
    rows = []
    for a in results.get("ablation") or []:
        if a.get("kind") in _NULL_KINDS:
            continue
        rows.append(
            (
                f"ASR / over-refusal, {a['setting']}",
                f"{_rate_cell(a['asr'], a.get('asr_ci95'), a.get('n_attack_success'), a.get('n_harmful'))} / "
                f"{_rate_cell(a['over_refusal'], a.get('over_refusal_ci95'), a.get('n_over_refusal'), a.get('n_harmless'))}"
                f"{_ablation_tests(a)}",
            )
        )
    return rows


def _ablation_tests(a: dict) -> str:
    """``; McNemar p = ...; random sets (...): ...; vs top-k%: ...; KL ...`` of one ablation row."""
    test = ""
    vb = (a.get("vs_baseline") or {}).get("asr")
    if vb:
        test = f"; McNemar p = {vb['p_value']:.3g}"
    for key, what in (("vs_random", "random sets"), ("vs_random_matched", "layer-matched sets")):
        vr = a.get(key) or {}
        if vr.get("asr_empirical_p") is not None:
            test += (
                f"; {what} ({vr['n_sets']}): mean {vr['asr_mean']:.2f} "
                f"({vr['asr_min']:.2f}-{vr['asr_max']:.2f}), empirical p = {vr['asr_empirical_p']:.2f}"
            )
    vp = a.get("vs_paper_ranking")
    if vp:
        test += f"; vs {vp['paper_setting']}: McNemar p = {vp['p_value']:.3g}"
    cap = (a.get("capability") or {}).get("kl")
    return test + (f"; KL {cap['value']:.3f} [{_num(cap['ci95'], 0)}, {_num(cap['ci95'], 1)}]" if cap else "")


def _design_rows(results: dict) -> list[tuple[str, str]]:
    """The held-out design's disjointness checks and the Holm-adjusted findings."""
    rows = []
    d = results.get("design") or {}
    checks = d.get("checks") or []
    if checks:
        held = [c for c in checks if c.get("held_out") and c.get("disjoint") is not None]
        ok = sum(bool(c["disjoint"]) for c in held)
        rows.append(
            (
                "held-out claims whose choosing and measuring requests are disjoint",
                f"{ok}/{len(held)}",
            )
        )
    for f in (results.get("holm") or {}).get("findings") or []:
        rows.append((f"Holm: {f['finding']}", f"p = {f['p']:.3g}, Holm p = {f['p_holm']:.3g}"))
    return rows


def _selection_rows(results: dict) -> list[tuple[str, str]]:
    """Cliff-as-a-Judge precision against the pool's base rate, and within each prompt set
    against the framing-stratified baseline."""
    sel = results.get("selection") or {}
    s = sel.get("summary")
    if not s:
        return []
    rows = [
        (
            f"Cliff-as-a-Judge top {s['top_percent']:g}%: jailbroken among selected",
            f"{s['complied_in_selection']}/{s['n_selected']} = "
            f"{_rate_cell(s['precision_complied'], s.get('precision_complied_ci95'))} "
            f"(pool base rate {s['complied_in_pool']}/{s['n_pool']})",
        )
    ]
    for name, b in (sel.get("by_prompt_set") or {}).items():
        rows.append(
            (
                f"... within {name}",
                f"{b['complied_in_selection']}/{b['n_selected']} selected jailbroken "
                f"(set base rate {b['complied_in_pool']}/{b['n_pool']})",
            )
        )
    sb = sel.get("stratified_baseline")
    if sb:
        rows.append(
            (
                "... vs a selector that knows only the prompt set",
                f"expected precision {_num([sb['expected_precision']], 0)}, exact p = {sb['p_value']:.3g}",
            )
        )
    return rows
