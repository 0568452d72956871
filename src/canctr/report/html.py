"""report.html: one self-contained page (inline CSS, PNGs as base64 data URIs, no external requests)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from canctr.report.summary import Column

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #1d2430;
       margin: 0; background: #f6f7f9; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e6ea; }
p, li { max-width: 1100px; }
.sub { color: #5b6573; margin: 0 0 16px; }
code { font: 12.5px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f1f3f5; padding: 1px 4px;
       border-radius: 3px; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 8px 0 6px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e6e8eb; text-align: right; white-space: nowrap; }
th { background: #f1f3f5; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
.paper { background: #fff8e6; }
th.paper { background: #fcefc9; }
td.left, th.left { text-align: left; white-space: normal; }
.status-failed, .status-interrupted { color: #b42318; font-weight: 600; }
.meta td, .meta th { text-align: left; white-space: normal; }
.meta td:first-child { color: #5b6573; width: 170px; }
.figs { display: grid; align-items: start; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; }
figure img { width: 100%; height: auto; border: 1px solid #e6e8eb; }
figcaption { color: #5b6573; font-size: 13px; margin-top: 4px; }
.note { color: #5b6573; font-size: 13px; }
"""


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


TableCell = str | tuple[str, str]  # text, or (text, extra CSS class of that cell)


def _table(headers: Sequence[str], rows: Sequence[Sequence[TableCell]], *, classes: Sequence[str] = (),
           group_row: str = "", table_class: str = "") -> str:
    """An HTML table; classes[i] is the CSS class of column i (e.g. "paper", "left")."""
    cls = list(classes) + [""] * (len(headers) - len(classes))

    def td(cell: TableCell, col_class: str, tag: str = "td") -> str:
        text, extra = (cell, "") if isinstance(cell, str) else cell
        c = " ".join(x for x in (col_class, extra) if x)
        return f'<{tag} class="{c}">{escape(text)}</{tag}>' if c else f"<{tag}>{escape(text)}</{tag}>"

    head = "".join(td(h, c, "th") for h, c in zip(headers, cls))
    body = "".join("<tr>" + "".join(td(v, c) for v, c in zip(r, cls)) + "</tr>" for r in rows)
    tattr = f' class="{table_class}"' if table_class else ""
    return f"<table{tattr}><thead>{group_row}<tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_table(columns: Sequence[Column], summary: Sequence[dict[str, Any]], n_paper: int,
                  ours_label: str, paper_label: str) -> str:
    """The summary with our columns first and the paper's last `n_paper` columns, highlighted."""
    n_ours = len(columns) - n_paper
    group = ""
    if n_paper:
        group = (f'<tr><th colspan="{n_ours}" class="left">{escape(ours_label)}</th>'
                 f'<th colspan="{n_paper}" class="paper left">{escape(paper_label)}</th></tr>')
    return _table([h for h, _ in columns], [[f(s) for _, f in columns] for s in summary],
                  classes=[""] * n_ours + ["paper"] * n_paper, group_row=group)


def _figure(png: Path, caption: str) -> str:
    return (f'<figure><img alt="{escape(caption)}" src="{data_uri(png)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def render(*, title: str, subtitle: str, summary_html: str, notes: Sequence[str],
           figures: Sequence[tuple[Path, str]], per_seed: tuple[Sequence[str], Sequence[Sequence[TableCell]]],
           cells: tuple[Sequence[str], Sequence[Sequence[TableCell]]], meta: Sequence[tuple[str, str]]) -> str:
    """The whole page. Text arguments are plain text (escaped here); figures are (png, caption): the first
    two side by side, the rest full width."""
    pairs = "".join(_figure(p, c) for p, c in figures[:2])
    wide = "".join(_figure(p, c) for p, c in figures[2:])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="sub">{escape(subtitle)}</p>
<h2>Summary</h2>
{summary_html}
{"".join(f'<p class="note">{escape(n)}</p>' for n in notes)}
<h2>Plots</h2>
<div class="figs">{pairs}</div>
{wide}
<h2>Per seed</h2>
{_table(*per_seed)}
<h2>Cells</h2>
{_table(*cells, classes=["", "", "left", "", "left"])}
<h2>Setup</h2>
{_table(["item", "value"], [[k, v] for k, v in meta], table_class="meta")}
</main></body></html>
"""
