"""Dependency-free inline SVG charts: line plots, heatmaps and grouped bars.

Every label and tooltip goes through :func:`~cliff_lens.viz.html.esc`; the output is a plain
``<svg>`` string with no external reference (no fonts, no images, no scripts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .html import esc

__all__ = [
    "line_plot",
    "heatmap",
    "grouped_bars",
    "sequential_color",
    "diverging_color",
    "text_width",
    "svg_size",
    "PALETTE",
]

PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
_FONT = 'font-family="sans-serif" font-size="11"'
_FONT_SIZE = 11
_TITLE_PAD = 8  # px of free space kept on each side of a chart title

#: advance widths (em) of printable ASCII in DejaVu Sans Bold, the widest of the usual default
#: sans-serif fonts (Arial, Helvetica and Liberation Sans are narrower): an upper bound for
#: estimating how wide a label renders without a browser
_EM_CHARS = "".join(chr(c) for c in range(32, 127))
_EM_WIDTHS = """
0.348 0.456 0.521 0.838 0.696 1.002 0.872 0.306 0.457 0.457 0.523 0.838 0.38 0.415 0.38 0.365
0.696 0.696 0.696 0.696 0.696 0.696 0.696 0.696 0.696 0.696 0.4 0.4 0.838 0.838 0.838 0.58 1
0.774 0.762 0.734 0.83 0.683 0.683 0.821 0.837 0.372 0.372 0.775 0.637 0.995 0.837 0.85 0.733
0.85 0.77 0.72 0.682 0.812 0.774 1.103 0.771 0.724 0.725 0.457 0.365 0.457 0.838 0.5 0.5 0.675
0.716 0.593 0.716 0.678 0.435 0.716 0.712 0.343 0.343 0.665 0.343 1.042 0.712 0.687 0.716 0.716
0.493 0.595 0.478 0.712 0.652 0.924 0.645 0.652 0.582 0.712 0.365 0.712 0.838
"""
_EM = dict(zip(_EM_CHARS, (float(w) for w in _EM_WIDTHS.split()), strict=True))


def text_width(text: str, font_size: float = _FONT_SIZE) -> float:
    """Estimated rendered width in px of ``text`` in a sans-serif font (bold or not).

    Sums DejaVu Sans Bold advance widths (an upper bound for the usual sans-serif fonts);
    characters outside printable ASCII count as 1 em.
    """
    return font_size * sum(_EM.get(c, 1.0) for c in str(text))


def _lerp_color(stops: list[tuple[float, tuple[int, int, int]]], t: float) -> str:
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            u = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            r, g, b = (round(a + (b_ - a) * u) for a, b_ in zip(c0, c1))
            return f"#{r:02x}{g:02x}{b:02x}"
    r, g, b = stops[-1][1]
    return f"#{r:02x}{g:02x}{b:02x}"


_SEQ = [(0.0, (255, 255, 255)), (0.5, (253, 174, 97)), (1.0, (165, 0, 38))]
_DIV = [(0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43))]


def sequential_color(v: float, vmin: float = 0.0, vmax: float = 1.0) -> str:
    """White -> orange -> dark red for ``v`` in ``[vmin, vmax]``; grey for NaN."""
    if v is None or not math.isfinite(v):
        return "#dddddd"
    return _lerp_color(_SEQ, (v - vmin) / (vmax - vmin) if vmax > vmin else 0.5)


def diverging_color(v: float, vmax: float) -> str:
    """Blue (negative) -> white (0) -> red (positive), symmetric around 0; grey for NaN."""
    if v is None or not math.isfinite(v):
        return "#dddddd"
    return _lerp_color(_DIV, 0.5 + 0.5 * v / vmax if vmax > 0 else 0.5)


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "nan"
    return f"{v:.4g}"


def _interval(lohi: Any) -> tuple[float, float] | None:
    """``(lo, hi)`` when both ends are finite numbers, else ``None``."""
    if lohi is None or len(lohi) != 2:
        return None
    try:
        lo, hi = float(lohi[0]), float(lohi[1])
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def svg_size(svg: str) -> tuple[float, float, list[float]]:
    """``(width, height, viewBox)`` of an ``<svg>`` string made here (for tests and layout)."""
    import re

    m = re.search(r'<svg\b[^>]*\bwidth="([\d.]+)"[^>]*\bheight="([\d.]+)"[^>]*\bviewBox="([^"]+)"', svg)
    if not m:
        raise ValueError("not an <svg> element with width, height and viewBox")
    return float(m.group(1)), float(m.group(2)), [float(v) for v in m.group(3).split()]


def _svg_open(width: int, height: int, title: str | None, klass: str) -> list[str]:
    """The ``<svg>`` element of a chart drawn in ``[0, width] x [0, height]``.

    When the title is wider than the chart, the element is widened to fit it (never clipped):
    the drawing keeps its coordinates and is centred under the title by shifting the viewBox.
    """
    full = float(width)
    if title:
        full = max(full, math.ceil(text_width(title) + 2 * _TITLE_PAD))
    dx = (full - width) / 2
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{klass}" width="{full:g}" height="{height}" '
        f'viewBox="{(-dx if dx else 0):g} 0 {full:g} {height}" role="img">'
    ]
    if title:
        out.append(f"<title>{esc(title)}</title>")
        out.append(
            f'<text class="cl-title" x="{width / 2:.1f}" y="14" text-anchor="middle" {_FONT} '
            f'font-weight="bold">{esc(title)}</text>'
        )
    return out


def line_plot(
    series: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    *,
    bands: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]] | None = None,
    vlines: Sequence[tuple[float, str]] = (),
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    width: int = 640,
    height: int = 300,
) -> str:
    """Lines (``name -> (x, y)``), optional shaded bands (``name -> (low, high)`` on the same x),
    vertical marker lines ``(x, label)``. NaN values break a line instead of dropping to 0."""
    longest = max((text_width(str(k)) for k in series), default=0.0)
    ml, mr, mt, mb = 52, max(130, math.ceil(40 + longest)), 24, 38
    width = max(width, ml + mr + 240)
    pw, ph = width - ml - mr, height - mt - mb
    xs_all = np.concatenate([np.asarray(x, float) for x, _ in series.values()]) if series else np.zeros(1)
    ys_all = np.concatenate([np.asarray(y, float) for _, y in series.values()]) if series else np.zeros(1)
    x0, x1 = float(np.nanmin(xs_all)), float(np.nanmax(xs_all))
    for vx, _ in vlines:
        x0, x1 = min(x0, vx), max(x1, vx)
    if x1 <= x0:
        x1 = x0 + 1
    if ylim is None:
        finite = ys_all[np.isfinite(ys_all)]
        y0, y1 = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if y1 <= y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
    else:
        y0, y1 = ylim

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return mt + (1 - (v - y0) / (y1 - y0)) * ph

    out = _svg_open(width, height, title, "cl-line-plot")
    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" {_FONT}>{esc(_fmt(t))}</text>')
    for t in _ticks(x0, x1, 8):
        out.append(
            f'<text x="{sx(t):.1f}" y="{mt + ph + 14}" text-anchor="middle" {_FONT}>{esc(_fmt(t))}</text>'
        )
    out.append(
        f'<text x="{ml + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" {_FONT}>{esc(xlabel)}</text>'
    )
    out.append(
        f'<text x="12" y="{mt + ph / 2:.1f}" text-anchor="middle" {_FONT} '
        f'transform="rotate(-90 12 {mt + ph / 2:.1f})">{esc(ylabel)}</text>'
    )
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        x = np.asarray(xs, float)
        if bands and name in bands:
            lo, hi = (np.asarray(b, float) for b in bands[name])
            ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(x)
            if ok.any():
                pts = [f"{sx(a):.1f},{sy(min(max(b, y0), y1)):.1f}" for a, b in zip(x[ok], hi[ok])]
                pts += [
                    f"{sx(a):.1f},{sy(min(max(b, y0), y1)):.1f}" for a, b in zip(x[ok][::-1], lo[ok][::-1])
                ]
                out.append(
                    f'<polygon points="{" ".join(pts)}" fill="{color}" fill-opacity="0.15" stroke="none"/>'
                )
        y = np.asarray(ys, float)
        segs: list[list[str]] = []
        cur: list[str] = []
        for a, b in zip(x, y):
            if math.isfinite(a) and math.isfinite(b):
                cur.append(f"{sx(a):.1f},{sy(b):.1f}")
            elif cur:
                segs.append(cur)
                cur = []
        if cur:
            segs.append(cur)
        for seg in segs:
            out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = mt + 10 + 16 * i
        out.append(
            f'<line x1="{ml + pw + 10}" x2="{ml + pw + 28}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/>'
        )
        out.append(f'<text x="{ml + pw + 32}" y="{ly + 4}" {_FONT}>{esc(name)}</text>')
    for vx, label in vlines:
        out.append(
            f'<line class="cl-vline" x1="{sx(vx):.1f}" x2="{sx(vx):.1f}" y1="{mt}" y2="{mt + ph}" '
            'stroke="#333" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{sx(vx) - 3:.1f}" y="{mt + 11}" text-anchor="end" {_FONT}>{esc(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def heatmap(
    matrix: Any,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    diverging: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    outline: Sequence[tuple[int, int]] = (),
    vline_col: float | None = None,
    vline_label: str = "",
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    tooltip: str = "{row}, {col}: {value}",
    cell: tuple[float, float] | None = None,
    col_label_every: int | None = None,
) -> str:
    """A matrix as coloured cells (rows top to bottom), with a colour bar, ``<title>`` tooltips,
    outlined cells ``(row, col)`` and an optional vertical line before column ``vline_col``."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {m.shape}")
    n_r, n_c = m.shape
    finite = m[np.isfinite(m)]
    if diverging:
        vabs = float(np.abs(finite).max()) if finite.size else 1.0
        vmax = vmax if vmax is not None else (vabs or 1.0)
        vmin = -vmax
    else:
        vmin = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
        vmax = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    cw, ch = cell or (max(3.0, min(28.0, 560.0 / max(n_c, 1))), max(4.0, min(22.0, 420.0 / max(n_r, 1))))
    ml, mt, mb, mr = 56, 24, 40, 80
    width = int(ml + n_c * cw + mr)
    height = int(mt + n_r * ch + mb)
    out = _svg_open(width, height, title, "cl-heatmap")
    color = (lambda v: diverging_color(v, vmax)) if diverging else (lambda v: sequential_color(v, vmin, vmax))
    for r in range(n_r):
        for c in range(n_c):
            v = float(m[r, c])
            tip = tooltip.format(row=row_labels[r], col=col_labels[c], value=_fmt(v))
            out.append(
                f'<rect x="{ml + c * cw:.1f}" y="{mt + r * ch:.1f}" width="{cw:.1f}" height="{ch:.1f}" '
                f'fill="{color(v)}"><title>{esc(tip)}</title></rect>'
            )
    for r, c in outline:
        out.append(
            f'<rect class="cl-outline" x="{ml + c * cw:.1f}" y="{mt + r * ch:.1f}" width="{cw:.1f}" '
            f'height="{ch:.1f}" fill="none" stroke="#000" stroke-width="2"/>'
        )
    every_r = max(1, math.ceil(n_r / 30))
    for r in range(0, n_r, every_r):
        out.append(
            f'<text x="{ml - 4}" y="{mt + (r + 0.5) * ch + 4:.1f}" text-anchor="end" {_FONT}>{esc(row_labels[r])}</text>'
        )
    every_c = col_label_every or max(1, math.ceil(n_c / 24))
    for c in range(0, n_c, every_c):
        out.append(
            f'<text x="{ml + (c + 0.5) * cw:.1f}" y="{mt + n_r * ch + 13:.1f}" text-anchor="middle" {_FONT}>'
            f"{esc(col_labels[c])}</text>"
        )
    out.append(
        f'<text x="{ml + n_c * cw / 2:.1f}" y="{height - 4}" text-anchor="middle" {_FONT}>{esc(xlabel)}</text>'
    )
    out.append(
        f'<text x="12" y="{mt + n_r * ch / 2:.1f}" text-anchor="middle" {_FONT} '
        f'transform="rotate(-90 12 {mt + n_r * ch / 2:.1f})">{esc(ylabel)}</text>'
    )
    if vline_col is not None:
        x = ml + vline_col * cw
        out.append(
            f'<line class="cl-vline" x1="{x:.1f}" x2="{x:.1f}" y1="{mt - 4}" y2="{mt + n_r * ch + 2:.1f}" '
            'stroke="#000" stroke-width="1.5" stroke-dasharray="4 2"/>'
        )
        if vline_label:
            out.append(f'<text x="{x + 2:.1f}" y="{mt - 6}" {_FONT}>{esc(vline_label)}</text>')
    # colour bar
    bx, bh = ml + n_c * cw + 18, max(60.0, n_r * ch)
    for i in range(20):
        t = vmax - (vmax - vmin) * (i + 0.5) / 20
        out.append(
            f'<rect x="{bx:.1f}" y="{mt + i * bh / 20:.1f}" width="12" height="{bh / 20 + 0.5:.1f}" fill="{color(t)}"/>'
        )
    out.append(f'<text x="{bx + 16:.1f}" y="{mt + 9}" {_FONT}>{esc(_fmt(vmax))}</text>')
    out.append(f'<text x="{bx + 16:.1f}" y="{mt + bh:.1f}" {_FONT}>{esc(_fmt(vmin))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def grouped_bars(
    groups: Sequence[dict[str, Any]],
    series: Sequence[str],
    *,
    title: str | None = None,
    ylabel: str = "",
    ylim: tuple[float, float] = (0.0, 1.0),
    height: int = 300,
) -> str:
    """Grouped bars. Each group: ``{"label", "values": {series: v}, "ci": {series: (lo, hi)},
    "spread": {series: (lo, hi)}, "points": {series: [v, ...]}, "note"}``.

    ``ci`` (an interval, e.g. the 95% Wilson interval of a rate) is drawn as a whisker with
    caps (``class="cl-ci"``); ``spread`` (e.g. min..max over seeds) as a whisker with caps
    (``class="cl-spread"``) and ``points`` as dots. A ``None`` end of an interval is not drawn.
    """
    ml, mt, mb = 52, 24, 56
    mr = max(130, math.ceil(36 + max((text_width(str(x)) for x in series), default=0.0)))
    gw = max(40, 28 * len(series) + 20)
    width = ml + gw * max(len(groups), 1) + mr
    ph = height - mt - mb
    y0, y1 = ylim

    def sy(v: float) -> float:
        return mt + (1 - (min(max(v, y0), y1) - y0) / (y1 - y0)) * ph

    out = _svg_open(width, height, title, "cl-bars")
    for t in _ticks(y0, y1):
        out.append(
            f'<line x1="{ml}" x2="{ml + gw * len(groups)}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{ml - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" {_FONT}>{esc(_fmt(t))}</text>')
    out.append(
        f'<text x="12" y="{mt + ph / 2:.1f}" text-anchor="middle" {_FONT} '
        f'transform="rotate(-90 12 {mt + ph / 2:.1f})">{esc(ylabel)}</text>'
    )
    bw = 24
    for gi, g in enumerate(groups):
        gx = ml + gi * gw + 10
        for si, s in enumerate(series):
            v = g.get("values", {}).get(s)
            if v is None or not math.isfinite(v):
                continue
            x = gx + si * (bw + 4)
            color = PALETTE[si % len(PALETTE)]
            n_pts = len(g.get("points", {}).get(s, []))
            tip = f"{g['label']} {s}: {_fmt(v)}" + (f" (mean of {n_pts})" if n_pts > 1 else "")
            ci = _interval(g.get("ci", {}).get(s))
            spread = _interval(g.get("spread", {}).get(s))
            if ci:
                tip += f", 95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]"
            if spread:
                tip += f", min..max [{_fmt(spread[0])}, {_fmt(spread[1])}]"
            out.append(
                f'<rect class="cl-bar" x="{x}" y="{sy(v):.1f}" width="{bw}" height="{sy(y0) - sy(v):.1f}" '
                f'fill="{color}"><title>{esc(tip)}</title></rect>'
            )
            cx = x + bw / 2
            for klass, lohi in (("cl-ci", ci), ("cl-spread", spread)):
                if lohi is None:
                    continue
                lo, hi = lohi
                out.append(
                    f'<line class="{klass}" x1="{cx}" x2="{cx}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" '
                    'stroke="#000" stroke-width="1.5"/>'
                )
                for yv in (lo, hi):
                    out.append(
                        f'<line x1="{cx - 5}" x2="{cx + 5}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#000"/>'
                    )
            for p in g.get("points", {}).get(s, []):
                if p is not None and math.isfinite(p):
                    out.append(
                        f'<circle cx="{x + bw / 2}" cy="{sy(p):.1f}" r="2.5" fill="#000" fill-opacity="0.6"/>'
                    )
        out.append(
            f'<text x="{gx + (gw - 20) / 2:.1f}" y="{mt + ph + 14}" text-anchor="middle" {_FONT}>{esc(g["label"])}</text>'
        )
        if g.get("note"):
            out.append(
                f'<text x="{gx + (gw - 20) / 2:.1f}" y="{mt + ph + 28}" text-anchor="middle" {_FONT} fill="#555">'
                f"{esc(g['note'])}</text>"
            )
    for si, s in enumerate(series):
        ly = mt + 10 + 16 * si
        lx = ml + gw * len(groups) + 10
        out.append(
            f'<rect x="{lx}" y="{ly - 6}" width="14" height="10" fill="{PALETTE[si % len(PALETTE)]}"/>'
        )
        out.append(f'<text x="{lx + 18}" y="{ly + 3}" {_FONT}>{esc(s)}</text>')
    out.append("</svg>")
    return "\n".join(out)
