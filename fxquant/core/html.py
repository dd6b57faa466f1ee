"""Self-contained HTML pages for reports: one style, tables, and matplotlib figures inlined as PNG
data URIs (a page needs no network and no other file to be viewed).

Example:
    >>> from fxquant.core import html
    >>> fig = html.new_figure(6, 3); fig.add_subplot().plot([1, 2, 3])
    >>> page = html.page("SQNR", html.figure(fig) + html.table(["layer", "dB"], [["conv1", 31.2]]))
    >>> page.startswith("<!DOCTYPE html>")
    True
"""
from __future__ import annotations

import base64
import html as _html
import io
from typing import Any, Sequence

__all__ = ["escape", "page", "table", "figure", "new_figure", "link", "STYLE"]

#: The one style sheet of fxquant's pages.
STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;"
    "max-width:1200px;color:#1d1d1f;line-height:1.4;padding:0 16px}"
    "h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:8px 0;font-size:.92em}"
    "td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}"
    "th{background:#f5f5f7}td:first-child,th:first-child{text-align:left}"
    "td.l,th.l{text-align:left}.bad{color:#b00020}.good{color:#0a7d32}"
    ".verdict{font-size:1.1em;padding:8px 12px;background:#f5f5f7;border-left:4px solid #0a58ca}"
    "img{max-width:100%;height:auto}code,pre{background:#f5f5f7;padding:1px 4px}"
    "pre{padding:8px;overflow-x:auto}.muted{color:#666;font-size:.9em}"
)


def escape(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return _html.escape(str(value), quote=True)


def page(title: str, body: str, *, subtitle: str = "") -> str:
    """A complete HTML page: ``title`` as its title and heading, ``body`` (HTML) below it.

    Example:
        >>> "<h1>Report</h1>" in page("Report", "<p>hi</p>")
        True
    """
    sub = f'<p class="muted">{escape(subtitle)}</p>' if subtitle else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{sub}{body}</body></html>\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
          raw: bool = False, row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are HTML already).

    Example:
        >>> table(["a"], [[1]])
        '<table><tr><th>a</th></tr><tr><td>1</td></tr></table>'
    """
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    head_row = f"<tr>{head}</tr>" if any(headers) else ""   # all-empty headers: no header row
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        attr = f' class="{escape(cls)}"' if cls else ""
        cells = "".join(f"<td>{c if raw else escape(c)}</td>" for c in row)
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table>{head_row}{''.join(body)}</table>"


def link(href: str, text: str) -> str:
    """An ``<a>`` to a relative file."""
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` with an Agg canvas (no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def figure(fig: Any, *, alt: str = "plot", dpi: int = 80) -> str:
    """``fig`` as an ``<img>`` with the PNG inlined (a data URI).

    Example:
        >>> figure(new_figure(2, 2)).startswith('<img alt="plot" src="data:image/png;base64,')
        True
    """
    stream = io.BytesIO()
    fig.savefig(stream, format="png", dpi=dpi)
    data = base64.b64encode(stream.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
