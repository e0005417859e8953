"""HTML building blocks for the views and the report: escaping, safe JSON-in-script, and the
offline circuitsvis bundle.

circuitsvis normally loads its JavaScript from a CDN (unpkg). Its wheel also ships the whole
bundle as one IIFE file (``circuitsvis/dist/cdn/iife.js``) that defines a global
``CircuitsVis`` with ``render(id, Component, props)`` and the React components
(``ColoredTokens``, ``AttentionHeads``, ...). The report inlines that file once in a classic
``<script>`` and every view calls ``CircuitsVis.render`` on its own ``<div>``; in Jupyter each
view inlines the bundle itself (like circuitsvis does offline), so notebooks work without
network too.
"""

from __future__ import annotations

import html
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import uuid4

__all__ = [
    "HtmlView",
    "CircuitsView",
    "CompositeView",
    "esc",
    "json_for_script",
    "circuitsvis_bundle",
    "bundle_script_tag",
]


def esc(value: Any) -> str:
    """HTML-escape any value's ``str`` (quotes included): safe in text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _clean(obj: Any) -> Any:
    """Convert tensors/arrays to lists and non-finite floats to None (valid JSON for JS)."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def json_for_script(obj: Any) -> str:
    """JSON text that is safe to embed inside an inline ``<script>`` element.

    ``<``, ``>`` and ``&`` are written as ``\\u003c``/``\\u003e``/``\\u0026`` (still the same
    JSON string values), so a ``</script>`` or ``<!--`` inside user text cannot end or change
    the script element; U+2028/U+2029 are escaped too. Tensors and arrays become lists,
    NaN/inf become ``null``.
    """
    text = json.dumps(_clean(obj), ensure_ascii=False, allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis JavaScript bundle (IIFE defining ``CircuitsVis``), ready to inline.

    Read from the installed circuitsvis wheel; ``</script`` is rewritten as ``<\\/script``
    (same JS value) and the source-map comment is dropped so the page requests nothing.
    """
    try:
        import circuitsvis
    except ImportError as e:  # pragma: no cover - circuitsvis is a hard dependency
        raise ImportError("circuitsvis is not installed; run `pip install circuitsvis>=1.43`") from e
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise FileNotFoundError(
            f"the circuitsvis wheel has no offline bundle at {path}; reinstall circuitsvis>=1.43 "
            "(`pip install --force-reinstall circuitsvis`)"
        )
    js = path.read_text(encoding="utf-8")
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    js = re.sub(r"^//# sourceMappingURL=.*$", "", js, flags=re.MULTILINE)
    return js


def bundle_script_tag() -> str:
    """``<script>`` element holding the circuitsvis bundle (put it once per page)."""
    return f'<script id="circuitsvis-bundle">\n{circuitsvis_bundle()}\n</script>'


class HtmlView:
    """A piece of HTML that renders in Jupyter (``_repr_html_``) and in the report (``to_html``).

    ``to_html()`` is the fragment for a page that already holds the circuitsvis bundle;
    ``_repr_html_()`` is standalone (inlines the bundle when the view needs it).
    """

    needs_bundle: bool = False

    def __init__(self, fragment: str = "", *, data: dict[str, Any] | None = None) -> None:
        self._fragment = fragment
        self.data = data or {}

    def to_html(self) -> str:
        """HTML fragment for a page that already loaded the circuitsvis bundle."""
        return self._fragment

    def _repr_html_(self) -> str:
        frag = self.to_html()
        if self.needs_bundle:
            return bundle_script_tag() + "\n" + frag
        return frag

    def __html__(self) -> str:
        return self._repr_html_()

    def __str__(self) -> str:
        return self.to_html()


class CircuitsView(HtmlView):
    """One circuitsvis React component (``ColoredTokens``, ``AttentionHeads``, ...) with its props.

    The render call is wrapped in ``try``/``catch`` so one broken view shows an error message
    instead of stopping the rest of the page.
    """

    needs_bundle = True

    def __init__(self, component: str, props: dict[str, Any], *, title: str | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", component):
            raise ValueError(f"component {component!r} is not a circuitsvis component name")
        super().__init__()
        self.component = component
        self.props = {k: v for k, v in props.items() if v is not None}
        self.title = title
        self.element_id = "cv-" + uuid4().hex[:12]

    def to_html(self) -> str:
        title = f'<div class="cv-title">{esc(self.title)}</div>' if self.title else ""
        return (
            f'<div class="cv-view" data-component="{self.component}">{title}'
            f'<div id="{self.element_id}" class="cv-root"></div>\n'
            f"<script>(function(){{var el=document.getElementById({json_for_script(self.element_id)});"
            f"try{{CircuitsVis.render({json_for_script(self.element_id)},CircuitsVis.{self.component},"
            f"{json_for_script(self.props)});}}catch(e){{el.textContent='view failed to render: '+e;}}"
            f"}})();</script></div>"
        )


class CompositeView(HtmlView):
    """Several views (and HTML snippets) shown together."""

    def __init__(self, parts: list[HtmlView | str], *, data: dict[str, Any] | None = None) -> None:
        super().__init__(data=data)
        self.parts = parts
        self.needs_bundle = any(isinstance(p, HtmlView) and p.needs_bundle for p in parts)

    def to_html(self) -> str:
        return "\n".join(p.to_html() if isinstance(p, HtmlView) else p for p in self.parts)
