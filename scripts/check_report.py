#!/usr/bin/env python
"""Open a cliff_lens report in headless Chromium with no network and check that it is safe and renders.

Usage:
    python scripts/check_report.py RUN_DIR/report.html     # check a report
    python scripts/check_report.py --synthetic             # build a synthetic report (with a
                                                           # <script> planted in a prompt) and check it

Checks (exit status 1 and a list of failures when one fails):
- static: no http(s):// or protocol-relative URL in any src/href/action/srcset attribute, no
  ``<script src>``, no ``<link>``/``<iframe>``/``@import``/``url(http``, no CDN host, and the
  circuitsvis bundle is inlined exactly once;
- network: Chromium runs with every request sent to a local recording proxy (and DNS mapped to
  nothing); the proxy must see no request at all;
- rendering: after the page's JavaScript ran (``--virtual-time-budget``), every circuitsvis view's
  root ``<div>`` has rendered children (``AttentionHeads``: a ``<canvas>``; ``ColoredTokens``:
  token elements), and no view shows a render error;
- escaping: the page title is not ``PWNED`` and no ``#pwned-marker`` element exists (the planted
  ``<script>`` did not run); with ``--synthetic`` (or ``--expect-planted``) the planted text
  must be visible as text; the console logs no Content-Security-Policy violation or uncaught error.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--mute-audio",
]
URL_ATTRS = {"src", "href", "action", "srcset", "data", "poster", "formaction", "xlink:href", "background"}
PLANTED_MARKER_ID = "pwned-marker"  # added by the planted <script> if it runs
PLANTED_HTML_ID = "pwned-html"  # exists if the planted text was inserted as HTML
#: Chromium's own background traffic (network time, component updater, sign-in) that some
#: builds send despite the flags above; it does not come from the page and is reported apart
BROWSER_BACKGROUND_HOSTS = (
    "google.com",
    "googleapis.com",
    "gstatic.com",
    "gvt1.com",
    "googleusercontent.com",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``$CHROMIUM``, then the usual names)."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


class _Tags(HTMLParser):
    """Collects tags with attributes, ids, text of <title>, and circuitsvis roots + their subtree."""

    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.ids: set[str] = set()
        self.title = ""
        self._in_title = False
        self._stack: list[str] = []
        self.roots: list[dict] = []  # {"component", "id", "n_children", "tags": Counter-like dict, "text"}
        self._open_roots: list[tuple[dict, int]] = []  # (root, depth at which it opened)
        self._component_stack: list[tuple[str, int]] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "title" and "svg" not in self._stack and not self.title:
            self._in_title = True
        for root, _ in self._open_roots:
            root["tags"][tag] = root["tags"].get(tag, 0) + 1
            root["n_children"] += 1
        cls = a.get("class", "").split()
        if "cv-view" in cls:
            self._component_stack.append((a.get("data-component", "?"), len(self._stack)))
        if "cv-root" in cls:
            comp = self._component_stack[-1][0] if self._component_stack else "?"
            root = {"component": comp, "id": a.get("id", ""), "n_children": 0, "tags": {}, "text": ""}
            self.roots.append(root)
            self._open_roots.append((root, len(self._stack)))
        if tag not in self.VOID:
            self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag in self.VOID:
            return
        if tag in self._stack:
            while self._stack:
                t = self._stack.pop()
                depth = len(self._stack)
                while self._open_roots and self._open_roots[-1][1] >= depth:
                    self._open_roots.pop()
                while self._component_stack and self._component_stack[-1][1] >= depth:
                    self._component_stack.pop()
                if t == tag:
                    break

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        for root, _ in self._open_roots:
            if len(root["text"]) < 2000:
                root["text"] += data


def static_checks(html: str) -> list[str]:
    """Problems found in the report's HTML source (before any JavaScript runs)."""
    problems = []
    p = _Tags()
    p.feed(html)
    for tag, attrs in p.tags:
        for k, v in attrs.items():
            if k.lower() in URL_ATTRS:
                v = v.strip()
                if re.match(r"(?i)^(https?:|//|ftp:|ws:|wss:)", v) or re.search(r"(?i)https?://", v):
                    problems.append(f"<{tag} {k}={v[:80]!r}> points to the network")
        if tag == "script" and attrs.get("src"):
            problems.append(f"<script src={attrs['src'][:80]!r}> loads an external script")
        if tag in ("link", "iframe", "object", "embed", "img") and any(
            attrs.get(k) and not attrs[k].startswith(("data:", "#")) for k in ("href", "src", "data")
        ):
            problems.append(f"<{tag}> references an external resource")
    if re.search(r"(?i)@import|url\(\s*['\"]?(https?:)?//", html):
        problems.append("CSS @import or url(http...) found")
    if "unpkg.com" in html or "cdn.jsdelivr" in html:
        problems.append("a CDN host (unpkg/jsdelivr) appears in the page")
    n_bundle = html.count("var CircuitsVis=")
    if n_bundle != 1:
        problems.append(f"the circuitsvis bundle is inlined {n_bundle} times (expected exactly once)")
    return problems


def _is_background(request_line: str) -> bool:
    """Whether a proxied request goes to one of Chromium's own service hosts."""
    target = request_line.split(" ", 1)[-1]
    host = re.sub(r"^[a-z]+://", "", target).split("/", 1)[0].split(":", 1)[0].lower()
    return any(host == h or host.endswith("." + h) for h in BROWSER_BACKGROUND_HOSTS)


class _RecordingProxy(http.server.ThreadingHTTPServer):
    """An HTTP proxy that answers 403 to everything and records what was asked."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _deny(self):
                proxy.requests.append(f"{self.command} {self.path}")
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_HEAD = do_CONNECT = do_PUT = do_OPTIONS = _deny

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def browser_checks(
    report: Path, chromium: str, *, timeout: float = 90, budget_ms: int = 5000, expect_planted: bool = False
) -> tuple[list[str], dict]:
    """Render the report in headless Chromium behind a recording proxy; return (problems, info)."""
    problems: list[str] = []
    proxy = _RecordingProxy()
    th = threading.Thread(target=proxy.serve_forever, daemon=True)
    th.start()
    port = proxy.server_address[1]
    with tempfile.TemporaryDirectory(prefix="cliff-chromium-") as profile:
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{port}",
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--enable-logging=stderr",
            "--v=0",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            report.resolve().as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        finally:
            proxy.shutdown()
            proxy.server_close()
    dom, log = proc.stdout, proc.stderr
    page_reqs = [r for r in proxy.requests if not _is_background(r)]
    info = {
        "chromium_rc": proc.returncode,
        "dom_bytes": len(dom),
        "page_requests": page_reqs,
        "browser_background_requests": [r for r in proxy.requests if _is_background(r)],
    }
    if proc.returncode != 0 or not dom.strip():
        problems.append(f"chromium failed (rc {proc.returncode}): {log[-1500:]}")
        return problems, info
    if page_reqs:
        problems.append(f"the page tried the network: {page_reqs[:5]}")
    source_tags = _Tags()
    source_tags.feed(report.read_text(encoding="utf-8"))
    p = _Tags()
    p.feed(dom)
    info["title"] = p.title
    if p.title.strip() == "PWNED":
        problems.append("a planted <script> ran: the page title is 'PWNED'")
    if PLANTED_MARKER_ID in p.ids:
        problems.append(f"a planted <script> ran: element #{PLANTED_MARKER_ID} exists")
    if PLANTED_HTML_ID in p.ids:
        problems.append(f"planted user text was inserted as HTML: element #{PLANTED_HTML_ID} exists")
    n_src = sum(1 for tag, _ in source_tags.tags if tag == "script")
    n_dom = sum(1 for tag, _ in p.tags if tag == "script")
    if n_dom > n_src:
        problems.append(
            f"the rendered page has {n_dom} <script> elements, the file {n_src}: text was inserted as HTML"
        )
    if expect_planted and "document.title='PWNED'" not in dom.replace("&#39;", "'").replace("&apos;", "'"):
        problems.append("the planted <script> prompt is not shown as text in the rendered page")
    views = {}
    for root in p.roots:
        views[root["component"]] = views.get(root["component"], 0) + 1
        where = f"{root['component']} view #{root['id']}"
        if root["n_children"] == 0:
            problems.append(f"{where} is empty after JavaScript ran")
        elif "view failed to render" in root["text"]:
            problems.append(f"{where}: {root['text'][:200]}")
        elif root["component"] == "AttentionHeads" and not root["tags"].get("canvas"):
            problems.append(f"{where} has no <canvas> (the attention grid did not draw)")
        elif root["component"] == "ColoredTokens" and not root["text"].strip():
            problems.append(f"{where} shows no token text")
    info["views"] = views
    if not p.roots:
        problems.append("no circuitsvis view found in the page")
    bad_console = [
        ln
        for ln in log.splitlines()
        if "Content Security Policy" in ln or "Uncaught" in ln or ("CONSOLE" in ln and "rror" in ln)
    ]
    if bad_console:
        problems.append("console errors: " + " | ".join(b[:300] for b in bad_console[:5]))
    return problems, info


def _build_synthetic(out_dir: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cliff_lens.testing import tiny_model_with_tokenizer, write_synthetic_run
    from cliff_lens.viz import build_report

    run = write_synthetic_run(out_dir / "run")
    return build_report(run, model=tiny_model_with_tokenizer())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", nargs="?", help="path of report.html")
    ap.add_argument(
        "--synthetic", action="store_true", help="build and check a synthetic report with a planted <script>"
    )
    ap.add_argument(
        "--expect-planted", action="store_true", help="require the planted <script> text to be shown"
    )
    ap.add_argument(
        "--chromium", default=None, help="Chromium binary (default: $CHROMIUM or chromium on PATH)"
    )
    ap.add_argument("--budget-ms", type=int, default=5000, help="virtual time given to the page's JavaScript")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)
    if not args.report and not args.synthetic:
        ap.error("give REPORT.html or --synthetic")
    chromium = args.chromium or find_chromium()
    with tempfile.TemporaryDirectory(prefix="cliff-report-") as tmp:
        report = _build_synthetic(Path(tmp)) if args.synthetic else Path(args.report)
        if not report.exists():
            print(
                f"error: {report} does not exist; build it with `cliff-lens report RUN_DIR`", file=sys.stderr
            )
            return 2
        html = report.read_text(encoding="utf-8")
        problems = static_checks(html)
        info: dict = {"report": str(report), "bytes": len(html)}
        if chromium is None:
            print(
                "error: no Chromium found; install it (`apt-get install chromium`) or pass --chromium PATH",
                file=sys.stderr,
            )
            return 2
        bp, binfo = browser_checks(
            report,
            chromium,
            timeout=args.timeout,
            budget_ms=args.budget_ms,
            expect_planted=args.synthetic or args.expect_planted,
        )
        problems += bp
        info.update(binfo)
    info["problems"] = problems
    print(json.dumps(info, indent=2))
    print("FAIL" if problems else "OK: report is offline, renders, and escapes user text")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
