"""Views of the refusal cliff that render in Jupyter, and the self-contained HTML report.

- :func:`refusal_tokens`: tokens coloured by refusal score (circuitsvis ``ColoredTokens``).
- :func:`suppression_head_attention`: attention of chosen heads from the end-of-thinking
  queries over the whole sequence (circuitsvis ``AttentionHeads``).
- :func:`trajectory_plot`, :func:`layer_position_map`, :func:`head_heatmap`,
  :func:`asr_bars`: inline SVG charts.
- :func:`build_report`: ``report.html`` for a run directory, offline (circuitsvis inlined once).

Every view has ``_repr_html_()`` (Jupyter) and ``to_html()`` (an HTML fragment).
"""

from __future__ import annotations

from .html import CircuitsView, CompositeView, HtmlView, circuitsvis_bundle, json_for_script
from .report import build_report
from .views import (
    AttentionView,
    SvgView,
    asr_bars,
    head_heatmap,
    layer_position_map,
    parse_setting,
    refusal_tokens,
    suppression_head_attention,
    trajectory_plot,
)

__all__ = [
    "refusal_tokens",
    "suppression_head_attention",
    "trajectory_plot",
    "layer_position_map",
    "head_heatmap",
    "asr_bars",
    "parse_setting",
    "build_report",
    "HtmlView",
    "CircuitsView",
    "CompositeView",
    "SvgView",
    "AttentionView",
    "circuitsvis_bundle",
    "json_for_script",
]
