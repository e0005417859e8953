"""Dependency-free inline SVG charts: line plots, heatmaps and grouped bars.

Every label and tooltip goes through :func:`~cliff_lens.viz.html.esc`; the output is a plain
``<svg>`` string with no external reference (no fonts, no images, no scripts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .html import esc

#: the x or y values of a line: a sequence of numbers or an array
_Values = Sequence[float | int] | np.ndarray

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


def text_width(text: str, font_size: float | int = _FONT_SIZE) -> float:
    """Estimated rendered width in px of ``text`` in a sans-serif font (bold or not).

    Sums DejaVu Sans Bold advance widths (an upper bound for the usual sans-serif fonts);
    characters outside printable ASCII count as 1 em.
    """
    return font_size * sum((_EM.get(c, 1.0) for c in str(text)), 0.0)


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


def sequential_color(v: float | int | None, vmin: float | int = 0.0, vmax: float | int = 1.0) -> str:
    """White -> orange -> dark red for ``v`` in ``[vmin, vmax]``; grey for NaN."""
    if v is None or not math.isfinite(v):
        return "#dddddd"
    return _lerp_color(_SEQ, (v - vmin) / (vmax - vmin) if vmax > vmin else 0.5)


def diverging_color(v: float | int | None, vmax: float | int) -> str:
    """Blue (negative) -> white (0) -> red (positive), symmetric around 0; grey for NaN."""
    if v is None or not math.isfinite(v):
        return "#dddddd"
    return _lerp_color(_DIV, 0.5 + 0.5 * v / vmax if vmax > 0 else 0.5)


def _fmt(v: float | int | None) -> str:
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


def _ticks(lo: float | int, hi: float | int, n: int = 5) -> list[float | int]:
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


@dataclass(frozen=True)
class _LineFrame:
    """The plot area of a line plot (left/top margins, width, height in px) and the data ranges
    ``[x0, x1] x [y0, y1]`` drawn onto it."""

    ml: int
    mt: int
    pw: int
    ph: int
    x0: float | int
    x1: float | int
    y0: float | int
    y1: float | int

    def sx(self, v: float | int) -> float:
        """The px x of data value ``v``."""
        return self.ml + (v - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, v: float | int) -> float:
        """The px y of data value ``v`` (larger values higher up)."""
        return self.mt + (1 - (v - self.y0) / (self.y1 - self.y0)) * self.ph


def _line_frame(
    series: Mapping[str, tuple[_Values, _Values]],
    vlines: Sequence[tuple[float | int, str]],
    ylim: tuple[float | int, float | int] | None,
    ml: int,
    mt: int,
    pw: int,
    ph: int,
) -> _LineFrame:
    """The data ranges of a line plot: x over every series and vertical line, y over the
    finite values (or ``ylim``); an empty range is widened so that nothing divides by zero."""
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
    return _LineFrame(ml, mt, pw, ph, x0, x1, y0, y1)


def _line_axes(f: _LineFrame, xlabel: str, ylabel: str, height: int) -> list[str]:
    """The frame, y grid lines with their ticks, x ticks and both axis labels of a line plot."""
    ml, mt, pw, ph = f.ml, f.mt, f.pw, f.ph
    out = [f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in _ticks(f.y0, f.y1):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{f.sy(t):.1f}" y2="{f.sy(t):.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{ml - 4}" y="{f.sy(t) + 4:.1f}" text-anchor="end" {_FONT}>{esc(_fmt(t))}</text>'
        )
    for t in _ticks(f.x0, f.x1, 8):
        out.append(
            f'<text x="{f.sx(t):.1f}" y="{mt + ph + 14}" text-anchor="middle" {_FONT}>{esc(_fmt(t))}</text>'
        )
    out.append(
        f'<text x="{ml + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" {_FONT}>{esc(xlabel)}</text>'
    )
    out.append(
        f'<text x="12" y="{mt + ph / 2:.1f}" text-anchor="middle" {_FONT} '
        f'transform="rotate(-90 12 {mt + ph / 2:.1f})">{esc(ylabel)}</text>'
    )
    return out


def _line_series(
    f: _LineFrame,
    i: int,
    name: str,
    xs: _Values,
    ys: _Values,
    band: tuple[_Values, _Values] | None,
) -> list[str]:
    """Series ``i`` of a line plot: its shaded band (clipped to the y range), its line (broken
    at non-finite values) and its legend entry."""
    color = PALETTE[i % len(PALETTE)]
    x = np.asarray(xs, float)
    out = []
    if band is not None:
        lo, hi = (np.asarray(b, float) for b in band)
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(x)
        if ok.any():
            pts = [f"{f.sx(a):.1f},{f.sy(min(max(b, f.y0), f.y1)):.1f}" for a, b in zip(x[ok], hi[ok])]
            pts += [
                f"{f.sx(a):.1f},{f.sy(min(max(b, f.y0), f.y1)):.1f}"
                for a, b in zip(x[ok][::-1], lo[ok][::-1])
            ]
            out.append(
                f'<polygon points="{" ".join(pts)}" fill="{color}" fill-opacity="0.15" stroke="none"/>'
            )
    y = np.asarray(ys, float)
    segs: list[list[str]] = []
    cur: list[str] = []
    for a, b in zip(x, y):
        if math.isfinite(a) and math.isfinite(b):
            cur.append(f"{f.sx(a):.1f},{f.sy(b):.1f}")
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    for seg in segs:
        out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2"/>')
    ly = f.mt + 10 + 16 * i
    lx = f.ml + f.pw
    out.append(f'<line x1="{lx + 10}" x2="{lx + 28}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/>')
    out.append(f'<text x="{lx + 32}" y="{ly + 4}" {_FONT}>{esc(name)}</text>')
    return out


def line_plot(
    series: Mapping[str, tuple[_Values, _Values]],
    *,
    bands: Mapping[str, tuple[_Values, _Values]] | None = None,
    vlines: Sequence[tuple[float | int, str]] = (),
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    ylim: tuple[float | int, float | int] | None = None,
    width: int = 640,
    height: int = 300,
) -> str:
    """Lines (``name -> (x, y)``), optional shaded bands (``name -> (low, high)`` on the same x),
    vertical marker lines ``(x, label)``. NaN values break a line instead of dropping to 0."""
    longest = max((text_width(str(k)) for k in series), default=0.0)
    ml, mr, mt, mb = 52, max(130, math.ceil(40 + longest)), 24, 38
    width = max(width, ml + mr + 240)
    f = _line_frame(series, vlines, ylim, ml, mt, width - ml - mr, height - mt - mb)
    out = _svg_open(width, height, title, "cl-line-plot")
    out += _line_axes(f, xlabel, ylabel, height)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        band = bands[name] if bands and name in bands else None
        out += _line_series(f, i, name, xs, ys, band)
    for vx, label in vlines:
        out.append(
            f'<line class="cl-vline" x1="{f.sx(vx):.1f}" x2="{f.sx(vx):.1f}" y1="{mt}" y2="{mt + f.ph}" '
            'stroke="#333" stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<text x="{f.sx(vx) - 3:.1f}" y="{mt + 11}" text-anchor="end" {_FONT}>{esc(label)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _heat_range(
    finite: np.ndarray, diverging: bool, vmin: float | int | None, vmax: float | int | None
) -> tuple[float | int, float | int]:
    """The colour range ``(vmin, vmax)`` of a heatmap: symmetric around 0 when diverging, else
    the given ends or the finite values' extremes."""
    if diverging:
        vabs = float(np.abs(finite).max()) if finite.size else 1.0
        vmax = vmax if vmax is not None else (vabs or 1.0)
        return -vmax, vmax
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    return lo, hi


@dataclass(frozen=True)
class _Grid:
    """The cells of a heatmap: the top-left corner ``(ml, mt)``, the cell size ``cw x ch`` and
    the ``n_r x n_c`` cells."""

    ml: int
    mt: int
    cw: float | int
    ch: float | int
    n_r: int
    n_c: int


def _heat_cells(
    g: _Grid,
    m: np.ndarray,
    color: Callable[[float], str],
    tooltip: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    outline: Sequence[tuple[int, int]],
) -> list[str]:
    """One coloured cell with its tooltip per matrix entry, then the outlined cells."""
    ml, mt, cw, ch = g.ml, g.mt, g.cw, g.ch
    out = []
    for r in range(g.n_r):
        for c in range(g.n_c):
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
    return out


def _heat_labels(
    g: _Grid,
    height: int,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    col_label_every: int | None,
    xlabel: str,
    ylabel: str,
) -> list[str]:
    """Row and column labels (thinned out to at most ~30 rows and ~24 columns) and the axis labels."""
    ml, mt, cw, ch, n_r, n_c = g.ml, g.mt, g.cw, g.ch, g.n_r, g.n_c
    out = []
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
    return out


def _color_bar(g: _Grid, color: Callable[[float], str], vmin: float | int, vmax: float | int) -> list[str]:
    """The colour bar right of a heatmap's cells (20 steps from ``vmax`` down to ``vmin``)."""
    mt = g.mt
    bx, bh = g.ml + g.n_c * g.cw + 18, max(60.0, g.n_r * g.ch)
    out = []
    for i in range(20):
        t = vmax - (vmax - vmin) * (i + 0.5) / 20
        out.append(
            f'<rect x="{bx:.1f}" y="{mt + i * bh / 20:.1f}" width="12" height="{bh / 20 + 0.5:.1f}" fill="{color(t)}"/>'
        )
    out.append(f'<text x="{bx + 16:.1f}" y="{mt + 9}" {_FONT}>{esc(_fmt(vmax))}</text>')
    out.append(f'<text x="{bx + 16:.1f}" y="{mt + bh:.1f}" {_FONT}>{esc(_fmt(vmin))}</text>')
    return out


def heatmap(
    matrix: Any,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    diverging: bool = False,
    vmin: float | int | None = None,
    vmax: float | int | None = None,
    outline: Sequence[tuple[int, int]] = (),
    vline_col: float | int | None = None,
    vline_label: str = "",
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    tooltip: str = "{row}, {col}: {value}",
    cell: tuple[float | int, float | int] | None = None,
    col_label_every: int | None = None,
) -> str:
    """A matrix as coloured cells (rows top to bottom), with a colour bar, ``<title>`` tooltips,
    outlined cells ``(row, col)`` and an optional vertical line before column ``vline_col``."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {m.shape}")
    n_r, n_c = m.shape
    lo, hi = _heat_range(m[np.isfinite(m)], diverging, vmin, vmax)
    cw, ch = cell or (max(3.0, min(28.0, 560.0 / max(n_c, 1))), max(4.0, min(22.0, 420.0 / max(n_r, 1))))
    g = _Grid(56, 24, cw, ch, n_r, n_c)
    ml, mt, mb, mr = g.ml, g.mt, 40, 80
    width = int(ml + n_c * cw + mr)
    height = int(mt + n_r * ch + mb)

    def color(v: float | int) -> str:
        return diverging_color(v, hi) if diverging else sequential_color(v, lo, hi)

    out = _svg_open(width, height, title, "cl-heatmap")
    out += _heat_cells(g, m, color, tooltip, row_labels, col_labels, outline)
    out += _heat_labels(g, height, row_labels, col_labels, col_label_every, xlabel, ylabel)
    if vline_col is not None:
        x = ml + vline_col * cw
        out.append(
            f'<line class="cl-vline" x1="{x:.1f}" x2="{x:.1f}" y1="{mt - 4}" y2="{mt + n_r * ch + 2:.1f}" '
            'stroke="#000" stroke-width="1.5" stroke-dasharray="4 2"/>'
        )
        if vline_label:
            out.append(f'<text x="{x + 2:.1f}" y="{mt - 6}" {_FONT}>{esc(vline_label)}</text>')
    out += _color_bar(g, color, lo, hi)
    out.append("</svg>")
    return "\n".join(out)


_BAR_WIDTH = 24  # px


@dataclass(frozen=True)
class _BarFrame:
    """The plot area of a bar chart: top margin ``mt``, height ``ph`` and the y range ``[y0, y1]``."""

    mt: int
    ph: int
    y0: float | int
    y1: float | int

    def sy(self, v: float | int) -> float:
        """The px y of ``v``, clipped to the y range."""
        return self.mt + (1 - (min(max(v, self.y0), self.y1) - self.y0) / (self.y1 - self.y0)) * self.ph


def _bar_tip(
    g: Mapping[str, Any], s: str, v: float | int
) -> tuple[str, tuple[float, float] | None, tuple[float, float] | None]:
    """The tooltip of series ``s``'s bar in group ``g``, with the bar's interval and spread."""
    n_pts = len(g.get("points", {}).get(s, []))
    tip = f"{g['label']} {s}: {_fmt(v)}" + (f" (mean of {n_pts})" if n_pts > 1 else "")
    ci = _interval(g.get("ci", {}).get(s))
    spread = _interval(g.get("spread", {}).get(s))
    if ci:
        tip += f", 95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if spread:
        tip += f", min..max [{_fmt(spread[0])}, {_fmt(spread[1])}]"
    return tip, ci, spread


def _bar(f: _BarFrame, g: Mapping[str, Any], s: str, si: int, x: int) -> list[str]:
    """Series ``s``'s bar of group ``g`` at px ``x``: the bar, its whiskers (``ci``, ``spread``)
    and its dots (``points``); nothing for a missing or non-finite value."""
    v = g.get("values", {}).get(s)
    if v is None or not math.isfinite(v):
        return []
    bw = _BAR_WIDTH
    tip, ci, spread = _bar_tip(g, s, v)
    out = [
        f'<rect class="cl-bar" x="{x}" y="{f.sy(v):.1f}" width="{bw}" height="{f.sy(f.y0) - f.sy(v):.1f}" '
        f'fill="{PALETTE[si % len(PALETTE)]}"><title>{esc(tip)}</title></rect>'
    ]
    cx = x + bw / 2
    for klass, lohi in (("cl-ci", ci), ("cl-spread", spread)):
        if lohi is None:
            continue
        lo, hi = lohi
        out.append(
            f'<line class="{klass}" x1="{cx}" x2="{cx}" y1="{f.sy(lo):.1f}" y2="{f.sy(hi):.1f}" '
            'stroke="#000" stroke-width="1.5"/>'
        )
        for yv in (lo, hi):
            out.append(
                f'<line x1="{cx - 5}" x2="{cx + 5}" y1="{f.sy(yv):.1f}" y2="{f.sy(yv):.1f}" stroke="#000"/>'
            )
    for p in g.get("points", {}).get(s, []):
        if p is not None and math.isfinite(p):
            out.append(
                f'<circle cx="{x + bw / 2}" cy="{f.sy(p):.1f}" r="2.5" fill="#000" fill-opacity="0.6"/>'
            )
    return out


def grouped_bars(
    groups: Sequence[dict[str, Any]],
    series: Sequence[str],
    *,
    title: str | None = None,
    ylabel: str = "",
    ylim: tuple[float | int, float | int] = (0.0, 1.0),
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
    f = _BarFrame(mt, height - mt - mb, *ylim)
    ph = f.ph
    out = _svg_open(width, height, title, "cl-bars")
    for t in _ticks(f.y0, f.y1):
        out.append(
            f'<line x1="{ml}" x2="{ml + gw * len(groups)}" y1="{f.sy(t):.1f}" y2="{f.sy(t):.1f}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{ml - 4}" y="{f.sy(t) + 4:.1f}" text-anchor="end" {_FONT}>{esc(_fmt(t))}</text>'
        )
    out.append(
        f'<text x="12" y="{mt + ph / 2:.1f}" text-anchor="middle" {_FONT} '
        f'transform="rotate(-90 12 {mt + ph / 2:.1f})">{esc(ylabel)}</text>'
    )
    for gi, g in enumerate(groups):
        gx = ml + gi * gw + 10
        for si, s in enumerate(series):
            out += _bar(f, g, s, si, gx + si * (_BAR_WIDTH + 4))
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
