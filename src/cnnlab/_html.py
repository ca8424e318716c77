"""Self-contained HTML pages: inline CSS, images as base64 PNG, no script, no network.

Shared by the evaluation report, the dataset check and the run comparison, so
that every page cnnlab writes opens from disk, offline, and looks the same.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence

import numpy as np

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa;
        --accent:#0969da; --bad:#cf222e; --good:#1a7f37; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
       Arial, sans-serif; color:var(--fg); background:var(--bg); }
header { padding:18px 28px 10px; border-bottom:1px solid var(--line); background:var(--soft); }
header h1 { margin:0 0 4px; font-size:22px; }
header .sub { color:var(--muted); }
nav { position:sticky; top:0; z-index:2; background:var(--bg); border-bottom:1px solid var(--line);
      padding:6px 28px; white-space:nowrap; overflow-x:auto; }
nav a { color:var(--accent); text-decoration:none; margin-right:14px; font-size:13px; }
main { padding:8px 28px 40px; max-width:1280px; }
section { margin:26px 0 8px; }
section h2 { font-size:18px; margin:0 0 8px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:14px 0 6px; }
p.note { color:var(--muted); margin:4px 0 8px; }
.tiles { display:flex; flex-wrap:wrap; gap:10px; margin:10px 0; }
.tile { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:120px; background:var(--soft); }
.tile .v { font-size:20px; font-weight:600; }
.tile .k { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; font-size:13px; margin:6px 0 10px; }
th, td { border:1px solid var(--line); padding:3px 8px; text-align:left; vertical-align:top; }
th { background:var(--soft); font-weight:600; }
td.n, th.n { text-align:right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight:600; background:var(--soft); }
.scroll { max-height:520px; overflow:auto; border:1px solid var(--line); display:inline-block; max-width:100%; }
.scroll table { margin:0; }
.wide { overflow:auto; max-width:100%; }
.bar { display:inline-block; height:9px; background:var(--accent); border-radius:2px; vertical-align:middle; }
.bad { color:var(--bad); } .good { color:var(--good); } .warn { color:var(--warn); }
img.plot { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; background:#fff; }
img.native { max-width:none; }
.figs { display:flex; flex-wrap:wrap; gap:14px; align-items:flex-start; }
.gallery { display:flex; flex-wrap:wrap; gap:10px; }
.card { border:1px solid var(--line); border-radius:6px; padding:6px; width:min-content; background:var(--soft); }
.card .imgs { display:flex; gap:4px; }
.card img { width:112px; height:112px; object-fit:contain; background:#fff; image-rendering:pixelated;
            border:1px solid var(--line); }
.card .cap { font-size:12px; line-height:1.3; margin-top:4px; min-width:112px; word-break:break-word; }
.card .cap .file { color:var(--muted); font-size:11px; }
.pill { display:inline-block; padding:0 6px; border-radius:9px; font-size:12px; border:1px solid var(--line); }
.pill.bad { border-color:var(--bad); } .pill.good { border-color:var(--good); } .pill.warn { border-color:var(--warn); }
details summary { cursor:pointer; color:var(--accent); margin:6px 0; }
code { background:var(--soft); padding:0 3px; border-radius:3px; }
footer { color:var(--muted); font-size:12px; padding:0 28px 24px; }
"""


def esc(value) -> str:
    """HTML-escape any value's ``str``."""
    return html.escape(str(value), quote=True)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fig_png(fig, dpi: int = 90) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def array_png(image: np.ndarray, max_side: int | None = None) -> bytes:
    """uint8 (H, W[, C]) array to PNG bytes, shrunk to ``max_side`` if larger."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    im = Image.fromarray(arr)
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def file_png(path: str, max_side: int = 160) -> bytes | None:
    """A file's image as a PNG thumbnail (as stored: no EXIF rotation), or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft(None, (max_side, max_side))  # JPEG: decode at reduced scale, much faster
            im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "PA") else "RGB")
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except Exception:  # noqa: BLE001 - a missing picture must not break a report
        return None


def img(png: bytes | None, alt: str = "", cls: str = "plot", title: str = "") -> str:
    if png is None:
        return f'<span class="note">(image unavailable: {esc(alt)})</span>'
    t = f' title="{esc(title)}"' if title else ""
    return f'<img class="{cls}" alt="{esc(alt)}"{t} src="{png_data_uri(png)}">'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence],
    numeric: Sequence[int] = (),
    row_classes: Sequence[str] | None = None,
    raw: bool = False,
) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are trusted HTML)."""
    num = set(numeric)
    head = "".join(
        f'<th class="n">{esc(h)}</th>' if i in num else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = "".join(
            ('<td class="n">' if i in num else "<td>") + (str(c) if raw else esc(c)) + "</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def tiles(items: Sequence[tuple[str, str]]) -> str:
    """Big headline numbers: ``[(label, value), ...]``."""
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
            for k, v in items
        )
        + "</div>"
    )


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def page(
    title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], footer: str = ""
) -> str:
    """A whole page: ``sections`` are ``(id, heading, inner HTML)``; a nav bar links them.

    No script and no external resource: the icon link points at an empty data URI
    so that browsers do not ask for ``favicon.ico``.
    """
    nav = "".join(f'<a href="#{esc(i)}">{esc(h)}</a>' for i, h, _ in sections)
    body = "\n".join(
        f'<section id="{esc(i)}"><h2>{esc(h)}</h2>\n{inner}\n</section>' for i, h, inner in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>
<nav>{nav}</nav>
<main>
{body}
</main>
<footer>{esc(footer)}</footer>
</body></html>
"""
